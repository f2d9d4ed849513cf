//! `tracing` spans of the stack: one `call` span per call (opened by the retry layer,
//! the outermost), and one `attempt` span inside it per attempt, numbered from 1, around
//! everything the layers below do for that attempt.
#![cfg(feature = "testing")]

use std::{cell::RefCell, collections::BTreeMap, sync::Once, time::Duration};

use http::{Method, StatusCode};
use ratewise::{
    stack::{ClientStackLayer, Platform},
    testing::{glm, json_request, GlmApi},
    BoxError,
};
use serde_json::json;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tracing::{
    field::{Field, Visit},
    span, Event, Subscriber,
};
use tracing_subscriber::{layer::Context, prelude::*, registry::LookupSpan, Layer};

/// A span as an event saw it: its id, name and fields.
#[derive(Clone, Debug)]
struct SpanSeen {
    id: u64,
    name: &'static str,
    fields: BTreeMap<String, String>,
}

/// An event with its message, fields and enclosing spans (outermost first).
#[derive(Clone, Debug)]
struct EventSeen {
    message: String,
    fields: BTreeMap<String, String>,
    spans: Vec<SpanSeen>,
}

impl EventSeen {
    fn span(&self, name: &str) -> Option<&SpanSeen> {
        self.spans.iter().find(|s| s.name == name)
    }

    /// The `n` of the attempt span the event is in.
    fn attempt(&self) -> Option<u32> {
        Some(self.span("attempt")?.fields["n"].parse().unwrap())
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

thread_local! {
    static CAPTURED: RefCell<Option<Vec<EventSeen>>> = const { RefCell::new(None) };
}

/// Files every event, with its spans, under the thread that emitted it.
struct Capture;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields.0);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        CAPTURED.with(|c| {
            let mut c = c.borrow_mut();
            let Some(events) = c.as_mut() else { return };
            let mut fields = Fields::default();
            event.record(&mut fields);
            let spans = ctx
                .event_scope(event)
                .map(|scope| {
                    scope
                        .from_root()
                        .map(|s| SpanSeen {
                            id: s.id().into_u64(),
                            name: s.name(),
                            fields: s
                                .extensions()
                                .get::<BTreeMap<String, String>>()
                                .cloned()
                                .unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let message = fields.0.remove("message").unwrap_or_default();
            events.push(EventSeen {
                message,
                fields: fields.0,
                spans,
            });
        });
    }
}

/// Starts capturing this thread's events. One subscriber serves the whole binary, so a
/// callsite first seen by another test is never cached as uninteresting.
fn start_capture() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing_subscriber::registry().with(Capture).init();
    });
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
}

fn captured(message: &str) -> Vec<EventSeen> {
    CAPTURED.with(|c| {
        c.borrow()
            .iter()
            .flatten()
            .filter(|e| e.message == message)
            .cloned()
            .collect()
    })
}

/// A GLM call that is answered 429 twice before it is served: its three attempts each
/// have their own `attempt` span (n = 1, 2, 3) inside the call's one `call` span, and
/// the layers' events of each attempt (the classifier's verdict, the cooldown's start
/// and probe) sit in that attempt's span.
#[tokio::test(start_paused = true)]
async fn one_call_is_one_span_and_each_attempt_a_numbered_child() -> Result<(), BoxError> {
    start_capture();
    // One call per 2 s window, counted from the first.
    let glm = GlmApi::new().limit(1).window(Duration::from_secs(2));
    let stack = ClientStackLayer::preset(Platform::Glm)
        .retry(|r| r.schedule([Duration::from_millis(100); 2]).max_attempts(3))
        .build()?;
    let svc = ServiceBuilder::new().layer(stack).service(glm.router());
    let chat = || {
        json_request(
            Method::POST,
            &format!("http://glm.test{}", glm::PATH),
            &json!({"messages": []}),
        )
    };

    // The first call is served; the second meets the spent window: 429 at t, cooldown
    // 1 s; attempt 2 waits for it and probes at t+1 s: 429, cooldown 2 s; attempt 3
    // waits for that and is served at t+3 s, in the next window.
    assert_eq!(svc.clone().oneshot(chat()?).await?.status(), StatusCode::OK);
    let t = Instant::now();
    assert_eq!(svc.clone().oneshot(chat()?).await?.status(), StatusCode::OK);
    assert_eq!(t.elapsed(), Duration::from_secs(3));

    // The classifier judges each attempt's answer inside that attempt's span.
    let verdicts = captured("classified response");
    let seen: Vec<_> = verdicts
        .iter()
        .map(|e| (e.attempt(), e.fields["status"].as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (Some(1), "200 OK"),
            (Some(1), "429 Too Many Requests"),
            (Some(2), "429 Too Many Requests"),
            (Some(3), "200 OK"),
        ]
    );
    // Two calls, two `call` spans, named by the preset; the second call's three
    // attempts share its span, each in a span of its own below it.
    let calls: Vec<_> = verdicts.iter().map(|e| e.span("call").unwrap()).collect();
    assert!(calls.iter().all(|c| c.fields["name"] == "glm"));
    assert_ne!(calls[0].id, calls[1].id);
    assert!(calls[1..].iter().all(|c| c.id == calls[1].id));
    for e in &verdicts {
        let names: Vec<_> = e.spans.iter().map(|s| s.name).collect();
        assert_eq!(names, ["call", "attempt"]);
    }
    let mut attempt_ids: Vec<_> = verdicts[1..]
        .iter()
        .map(|e| e.span("attempt").unwrap().id)
        .collect();
    attempt_ids.dedup();
    assert_eq!(attempt_ids.len(), 3, "one span per attempt");

    // The cooldown's events carry the attempt that caused them.
    let started: Vec<_> = captured("cooldown started")
        .iter()
        .map(EventSeen::attempt)
        .collect();
    assert_eq!(started, [Some(1), Some(2)]);
    let probes: Vec<_> = captured("probe request after cooldown")
        .iter()
        .map(EventSeen::attempt)
        .collect();
    assert_eq!(probes, [Some(2), Some(3)]);

    // The retry's own decisions sit in the call span, between attempts, and say which
    // attempt they follow.
    let retries = captured("retry: retrying after a retryable result");
    let seen: Vec<_> = retries
        .iter()
        .map(|e| {
            let names: Vec<_> = e.spans.iter().map(|s| s.name).collect();
            (
                names,
                e.fields["attempt"].as_str(),
                e.span("call").unwrap().id,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (vec!["call"], "1", calls[1].id),
            (vec!["call"], "2", calls[1].id)
        ]
    );
    Ok(())
}
