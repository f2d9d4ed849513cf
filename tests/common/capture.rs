//! Captures `tracing` events per test thread, as `LEVEL field=value ...` lines.
//!
//! A scoped subscriber (`set_default`) is not enough when other tests in the same binary
//! run on other threads: a callsite they register first can be cached as uninterested.
//! So one global subscriber is installed for the whole binary, always interested, and it
//! files each event under the thread that emitted it, for the tests that asked.

use std::{cell::RefCell, sync::Once};

thread_local! {
    static CAPTURED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

struct Capture;

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        CAPTURED.with(|c| {
            if let Some(lines) = c.borrow_mut().as_mut() {
                let mut line = event.metadata().level().to_string();
                event.record(&mut Fields(&mut line));
                lines.push(line);
            }
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Start capturing the events this thread emits (use a current-thread runtime).
pub fn start() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(Capture).expect("no other global subscriber");
    });
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
}

/// The events captured on this thread since [`start`].
pub fn events() -> Vec<String> {
    CAPTURED.with(|c| c.borrow().clone().unwrap_or_default())
}
