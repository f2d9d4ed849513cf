//! [`CallContext`]: what one call carries through the layers below it.

use http::Extensions;
use tokio::time::Instant;

use super::LayerId;

/// A caller's patience for one request: put it in the request's extensions to give
/// this call its own total deadline, instead of the retry layer's `deadline` (the
/// stack's budget). Every layer below reads what is left of it.
///
/// ```
/// use std::time::Duration;
/// use ratewise::vocabulary::Budget;
///
/// let mut req = http::Request::get("http://127.0.0.1:1/").body(()).unwrap();
/// // This one call may take 5 s in all, whatever the stack's default.
/// req.extensions_mut().insert(Budget(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget(pub std::time::Duration);

/// The per-call context a layer puts on a request (it rides every copy a retry makes):
/// today the call's total deadline, and which layer set it.
///
/// A [`RetryLayer`](crate::RetryLayer) with a deadline sets it when a call starts; the
/// layers below read it from the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallContext {
    set_by: LayerId,
    deadline: Instant,
}

impl CallContext {
    /// A context whose call must end by `deadline`, set by the layer `set_by`.
    pub(crate) fn new(set_by: LayerId, deadline: Instant) -> Self {
        CallContext { set_by, deadline }
    }

    /// The context on a request's extensions, if a layer above set one.
    pub(crate) fn get(extensions: &Extensions) -> Option<&CallContext> {
        extensions.get::<CallContext>()
    }

    /// When the call must be over.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The layer that set the context.
    pub(crate) fn set_by(&self) -> LayerId {
        self.set_by
    }
}
