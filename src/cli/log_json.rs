//! JSON log lines that always carry a `message`: tracing-subscriber's JSON formatter writes the
//! event's own fields, and events of other crates may have none called `message` (sqlx's query
//! log has a `summary`). Such a line is formatted by tracing-subscriber, read back with
//! serde_json and given a `message` (its `summary`, else the event's name); lines that have one
//! are written as they are, without the round trip.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Wraps a JSON event formatter (`F`) so every line has a `message`.
pub(super) struct WithMessage<F>(pub(super) F);

impl<S, N, F> FormatEvent<S, N> for WithMessage<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if event.metadata().fields().field("message").is_some() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str(line.trim_end())
        else {
            return writer.write_str(&line);
        };
        let message = object
            .get("summary")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| event.metadata().name().to_owned(), str::to_owned);
        object.insert("message".into(), message.into());
        match serde_json::to_string(&object) {
            Ok(text) => writeln!(writer, "{text}"),
            Err(_) => writer.write_str(&line),
        }
    }
}
