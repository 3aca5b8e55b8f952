//! The relay part of `mailbridge demo`: an in-process SMTP sink ([`super::smtp_sink`], loopback)
//! stands in for the club's smarthost. A registration confirmation and a password mail go
//! through the outbox and the relay worker and are shown as received; then an address the sink
//! refuses with 550 5.1.1 bounces, lands on the suppression list (the same table the newsletter
//! sync uses), and the next message to it is not sent.

use std::path::Path;

use anyhow::Context;

use super::smtp_sink::Sink;

use crate::app::App;
use crate::config::Config;
use crate::relay::{NewMessage, outbox};

const GONE: &str = "gone.member@example.org";

fn header_lines(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    // Unfold continuation lines so that each header shows whole.
    let mut headers: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        match headers.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => last.push_str(line),
            _ => headers.push(line.to_owned()),
        }
    }
    headers
        .into_iter()
        .filter(|l| {
            [
                "From:",
                "To:",
                "Subject:",
                "Date:",
                "Message-ID:",
                "Reply-To:",
                "Content-Type:",
            ]
            .iter()
            .any(|h| l.starts_with(h))
        })
        .collect()
}

/// Runs the relay steps, with the demo's state DB at `dir/mailbridge.db`.
pub async fn demo_relay_steps(dir: &Path) -> anyhow::Result<()> {
    let sink = Sink::start(&[GONE])
        .await
        .context("cannot start the SMTP sink on a loopback port")?;
    let port = sink.port;

    let text = format!(
        r#"[state]
url = "sqlite://mailbridge.db"
[members]
url = "sqlite://members.db"
mapping = "mappings/members.toml"
[relay]
from = "Riverside Rowing Club <club@club.example>"
routes = ["smtp"]
bounce_domain = "bounces.club.example"
verp_secret = "demo-verp-secret"
[relay.smtp]
host = "127.0.0.1"
port = {port}
tls = "none"
"#
    );
    let app = App::new(Config::from_str_with_env(
        &dir.join("relay-demo.toml"),
        &text,
        &|_| None,
    )?);
    let relay = app
        .relay()
        .context("the demo relay config has no [relay]")?;
    let store = app.migrated_store().await?;

    println!("15. Transactional mail: the outbox and the relay");
    println!("   an in-process SMTP sink on 127.0.0.1:{port} stands in for the club's smarthost\n");
    let registration = NewMessage {
        to: "new.member@example.org".into(),
        subject: "Willkommen im Ruderclub – bitte bestätigen".into(),
        text: "Hello,\n\nplease confirm your registration: https://club.example/confirm/7f3a\n".into(),
        html: Some("<p>Hello,</p><p><a href=\"https://club.example/confirm/7f3a\">Confirm your registration</a></p>".into()),
        reply_to: Some("office@club.example".into()),
        headers: Default::default(),
        category: "registration".into(),
    };
    let password = NewMessage {
        to: "rower@example.org".into(),
        subject: "Your password reset link".into(),
        text: "Someone asked to reset your password: https://club.example/reset/91cc\n".into(),
        html: None,
        reply_to: None,
        headers: Default::default(),
        category: "password".into(),
    };
    for m in [&registration, &password] {
        let q = outbox::enqueue(store, &relay, m).await?;
        println!(
            "   queued a {} mail to {:<24} id {}  Message-ID {}",
            m.category, m.to, q.id, q.message_id
        );
    }
    let worker = app.relay_worker(store, relay.clone())?;
    let summary = worker.run_once().await?;
    println!(
        "\n   `mailbridge relay --once`: {} sent, {} deferred, {} bounced\n",
        summary.sent, summary.deferred, summary.bounced
    );
    let received = sink.received();
    for r in &received {
        println!(
            "   received: MAIL FROM:<{}> RCPT TO:<{}>",
            r.from,
            r.to.join(">, <")
        );
        for line in header_lines(&r.data) {
            println!("     {line}");
        }
        println!();
    }

    println!("16. A hard bounce, then suppression");
    let gone = NewMessage {
        to: GONE.into(),
        subject: "Please confirm your registration".into(),
        text: "Please confirm.\n".into(),
        html: None,
        reply_to: None,
        headers: Default::default(),
        category: "registration".into(),
    };
    let q = outbox::enqueue(store, &relay, &gone).await?;
    worker.run_once().await?;
    let st = outbox::get(store, &q.id)
        .await?
        .context("the bounced message is missing")?;
    println!(
        "   to {GONE}: {} ({})",
        st.status.as_str(),
        st.last_reply.unwrap_or_default()
    );
    println!(
        "   on the suppression list now: {}",
        if outbox::is_suppressed(store, GONE).await? {
            "yes"
        } else {
            "no"
        }
    );
    let again = outbox::enqueue(
        store,
        &relay,
        &NewMessage {
            subject: "Reminder: please confirm".into(),
            ..gone
        },
    )
    .await?;
    worker.run_once().await?;
    let st = outbox::get(store, &again.id)
        .await?
        .context("the second message is missing")?;
    let total = sink.received().len();
    println!(
        "   the next message to {GONE}: {} — not sent (the sink still holds {total} messages)\n",
        st.status.as_str()
    );
    worker.close().await;
    app.close().await;
    Ok(())
}
