fn main() -> std::process::ExitCode {
    mailbridge::cli::main()
}
