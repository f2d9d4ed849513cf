//! Captures `tracing` events per test thread.
//!
//! A scoped subscriber (`set_default`) is not enough when other tests in the same binary
//! run on other threads: a callsite they register first can be cached as uninterested.
//! So one global subscriber is installed for the whole binary, always interested, and it
//! files each event under the thread that emitted it, for the tests that asked.

use std::{cell::RefCell, collections::HashMap, sync::Once};

/// One captured event.
#[derive(Clone, Debug)]
pub struct Captured {
    /// `LEVEL field=value ...`, values in `Debug` form (strings quoted).
    pub line: String,
    /// The event's target (module path by default).
    pub target: String,
    /// Field name to value; strings unquoted.
    pub fields: HashMap<String, String>,
}

thread_local! {
    static CAPTURED: RefCell<Option<Vec<Captured>>> = const { RefCell::new(None) };
}

struct Capture;

struct Visit<'a>(&'a mut Captured);

impl tracing::field::Visit for Visit<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0.line, " {}={:?}", field.name(), value);
        self.0
            .fields
            .insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        use std::fmt::Write;
        let _ = write!(self.0.line, " {}={:?}", field.name(), value);
        self.0
            .fields
            .insert(field.name().to_owned(), value.to_owned());
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
            if let Some(events) = c.borrow_mut().as_mut() {
                let mut captured = Captured {
                    line: event.metadata().level().to_string(),
                    target: event.metadata().target().to_owned(),
                    fields: HashMap::new(),
                };
                event.record(&mut Visit(&mut captured));
                events.push(captured);
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
pub fn captured() -> Vec<Captured> {
    CAPTURED.with(|c| c.borrow().clone().unwrap_or_default())
}

/// The captured events as `LEVEL field=value ...` lines.
pub fn events() -> Vec<String> {
    captured().into_iter().map(|c| c.line).collect()
}

/// The fields of the captured events whose target is `target`.
pub fn fields_of(target: &str) -> Vec<HashMap<String, String>> {
    captured()
        .into_iter()
        .filter(|c| c.target == target)
        .map(|c| c.fields)
        .collect()
}
