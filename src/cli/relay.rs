//! `mailbridge send` (enqueue one message, e.g. from a PHP `mail()` replacement) and
//! `mailbridge relay [--once]` (deliver the outbox).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::app::App;
use crate::config::RelayConfig;
use crate::process::UsageError;
use crate::relay::outbox::{self, EnqueueError, IdempotencyKey};
use crate::relay::render::NewMessage;
use crate::store::Store;

#[derive(Args, Debug)]
pub struct SendArgs {
    /// The recipient's address.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub subject: String,
    /// The plain-text body from FILE (`-` = stdin).
    #[arg(long, value_name = "FILE", required_unless_present = "html")]
    pub text: Option<PathBuf>,
    /// An HTML alternative from FILE (`-` = stdin); without --text the text part is derived from it.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// registration, password or notification.
    #[arg(long, default_value = "notification")]
    pub category: String,
    #[arg(long, value_name = "EMAIL")]
    pub reply_to: Option<String>,
    /// An extra header `Name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// An idempotency key: the same key within 24 hours prints the first message's id and
    /// queues nothing (a retry after a lost answer is safe); with a different message it is
    /// refused (exit 2).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Print `{"id", "message_id"}` instead of the id.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RelayArgs {
    /// Deliver until the outbox is empty or only messages waiting for a later retry remain.
    #[arg(long)]
    pub once: bool,
    /// With --once: print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

fn read_body(path: &Path, flag: &str, stdin_used: &mut bool) -> anyhow::Result<String> {
    if path == Path::new("-") {
        if *stdin_used {
            return Err(UsageError(format!("{flag} -: stdin can be read only once")).into());
        }
        *stdin_used = true;
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .with_context(|| format!("cannot read {flag} from stdin"))?;
        return Ok(s);
    }
    std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("{flag} {}: {e}", path.display())).into())
}

fn relay_config(app: &App) -> Result<Arc<RelayConfig>, UsageError> {
    app.relay().ok_or_else(|| {
        UsageError(format!(
            "{}: [relay] is missing; it sets the From address and the routes",
            app.config.path.display()
        ))
    })
}

async fn open_store(app: &App) -> anyhow::Result<&Store> {
    let store = super::open_store(app).await?;
    store
        .migrate()
        .await
        .context("cannot migrate the state database")?;
    Ok(store)
}

/// `mailbridge send`: prints the outbox id once the message is committed.
pub async fn send(config_path: &Path, args: SendArgs) -> anyhow::Result<u8> {
    let app = App::load(config_path)?;
    let relay = relay_config(&app)?;
    let key = args
        .key
        .as_deref()
        .map(|k| IdempotencyKey::parse(k).map_err(|why| UsageError(format!("--key: {why}"))))
        .transpose()?;
    let mut stdin_used = false;
    let html = args
        .html
        .as_deref()
        .map(|p| read_body(p, "--html", &mut stdin_used))
        .transpose()?;
    let text = match (&args.text, &html) {
        (Some(p), _) => read_body(p, "--text", &mut stdin_used)?,
        (None, Some(h)) => html2text::from_read(h.as_bytes(), 78)
            .map_err(|e| UsageError(format!("--html: cannot derive a text part: {e}")))?,
        (None, None) => return Err(UsageError("--text or --html is required".into()).into()),
    };
    let mut headers = BTreeMap::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| UsageError(format!("--header `{h}`: expected `Name: value`")))?;
        headers.insert(name.trim().to_owned(), value.trim().to_owned());
    }
    let msg = NewMessage {
        to: args.to,
        subject: args.subject,
        text,
        html,
        reply_to: args.reply_to,
        headers,
        category: args.category,
    };
    let store = open_store(&app).await?;
    let result = outbox::enqueue_keyed(store, &relay, &msg, key.as_ref()).await;
    app.close().await;
    let queued = match result {
        Ok(q) => q,
        Err(EnqueueError::Input(e)) => {
            let flag = match e.field.as_str() {
                "to" => "--to".to_owned(),
                "subject" => "--subject".to_owned(),
                "text" => "--text".to_owned(),
                "html" => "--html".to_owned(),
                "category" => "--category".to_owned(),
                "reply_to" => "--reply-to".to_owned(),
                other => format!("--header {}", other.trim_start_matches("headers.")),
            };
            return Err(UsageError(format!("{flag}: {}", e.message)).into());
        }
        Err(e @ EnqueueError::KeyReused { .. }) => {
            return Err(UsageError(format!("--key: {e}")).into());
        }
        Err(e) => return Err(e).context("the message was not queued"),
    };
    if args.json {
        println!("{}", serde_json::to_string(&queued)?);
    } else {
        println!("{}", queued.id);
    }
    if queued.replayed {
        eprintln!(
            "note: --key {} already names this message (queued within the last 24 hours); nothing new was queued",
            args.key.as_deref().unwrap_or_default()
        );
    }
    if queued.status == outbox::Status::Suppressed {
        eprintln!(
            "warning: {} is on the suppression list; the message is stored as `suppressed` and will not be sent",
            msg.to.trim()
        );
    }
    Ok(0)
}

/// `mailbridge relay [--once]`.
pub async fn relay(config_path: &Path, args: RelayArgs) -> anyhow::Result<u8> {
    let app = App::load(config_path)?;
    let relay = relay_config(&app)?;
    let store = open_store(&app).await?;
    let worker = app
        .relay_worker(store, relay)
        .map_err(|e| UsageError(e.to_string()))?;
    if args.once {
        let summary = worker.run_once().await.context("the relay run failed");
        worker.close().await;
        app.close().await;
        let summary = summary?;
        if args.json {
            println!("{}", serde_json::to_string(&summary)?);
        } else {
            println!(
                "relay: {} sent, {} deferred, {} outcome unknown (retried on the same route), {} waiting, {} bounced, {} suppressed, {} failed",
                summary.sent,
                summary.deferred,
                summary.ambiguous,
                summary.waiting,
                summary.bounced,
                summary.suppressed,
                summary.failed
            );
            if summary.purged > 0 {
                println!(
                    "relay: deleted the bytes of {} message(s) done more than [relay] body_retention_days ago",
                    summary.purged
                );
            }
        }
        if !summary.misconfigured_routes.is_empty() {
            eprintln!(
                "error: misconfigured route(s): {} (credentials, sender authorisation or policy; see the log); {} message(s) wait for a fix",
                summary.misconfigured_routes.join(", "),
                summary.waiting
            );
            if summary.waiting > 0 {
                return Ok(1);
            }
        }
        return Ok(if summary.bounced + summary.failed > 0 {
            3
        } else {
            0
        });
    }
    // SIGTERM/SIGINT: messages being sent finish and are recorded, claimed ones not started yet
    // are handed back (their leases end at once), nothing new is claimed; exit 0.
    let grace = crate::process::shutdown_grace(&app.config);
    let ended = crate::process::until_terminated(
        grace,
        Some(store),
        |shutdown| worker.run(shutdown, None),
        || "the relay's messages being sent".to_owned(),
    )
    .await;
    app.close().await;
    ended?;
    Ok(0)
}
