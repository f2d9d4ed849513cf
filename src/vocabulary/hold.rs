//! The [`Hold`] protocol: how a layer that let a request through asks the layers below
//! it to hold the request back if things change before it is sent.

use std::{fmt, sync::Arc};

use http::Extensions;
use tokio::time::Instant;

use super::{LayerId, Refusal};
use crate::key::Key;

/// A layer's say over a request it let through: may the request still go upstream?
///
/// A cooldown lets a request through while its key is open; the request may then wait
/// in a rate limiter's queue while another answer starts a cooldown. The cooldown
/// attaches itself to the request with [`Holds::attach`], and a layer below that held
/// the request back calls [`Holds::check`] right before sending it.
pub(crate) trait Hold: Send + Sync + 'static {
    /// `Ok` when a request for `key` may go now; else the refusal to return instead
    /// (the request is then not sent). `ticket` is what the holding layer attached.
    fn check(&self, key: &Key, ticket: Option<u64>, now: Instant) -> Result<(), Refusal>;
}

/// Every hold a request carries, outermost first (one per holding layer), in the
/// request's extensions.
#[derive(Clone, Default)]
pub(crate) struct Holds {
    /// The first hold, inline: a stack has one cooldown, so no allocation.
    first: Option<Entry>,
    rest: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    by: LayerId,
    hold: Arc<dyn Hold>,
    key: Key,
    ticket: Option<u64>,
}

impl Holds {
    /// Records on `extensions` that the layer `by` let the request through for `key`,
    /// with `ticket`. A hold of the same layer already there (a copy of a request that
    /// passed it before) is replaced.
    pub(crate) fn attach(
        extensions: &mut Extensions,
        by: LayerId,
        hold: Arc<dyn Hold>,
        key: &Key,
        ticket: Option<u64>,
    ) {
        let entry = Entry {
            by,
            hold,
            key: key.clone(),
            ticket,
        };
        let Some(holds) = extensions.get_mut::<Holds>() else {
            extensions.insert(Holds {
                first: Some(entry),
                rest: Vec::new(),
            });
            return;
        };
        if holds.first.as_ref().is_none_or(|e| e.by == by) {
            holds.first = Some(entry);
        } else if let Some(i) = holds.rest.iter().position(|e| e.by == by) {
            holds.rest[i] = entry;
        } else {
            holds.rest.push(entry);
        }
    }

    /// `Ok` when every hold on `extensions` lets the request go at `now`; else the first
    /// refusal, marked [`held_by`](Refusal::held_by) the layer that holds. A request
    /// without holds always goes.
    pub(crate) fn check(extensions: &Extensions, now: Instant) -> Result<(), Refusal> {
        let Some(holds) = extensions.get::<Holds>() else {
            return Ok(());
        };
        holds.iter().try_for_each(|e| {
            e.hold
                .check(&e.key, e.ticket, now)
                .map_err(|r| r.with_held_by(e.by))
        })
    }
}

impl Holds {
    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.first.iter().chain(self.rest.iter())
    }
}

impl fmt::Debug for Holds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|e| (e.by, &e.key, e.ticket)))
            .finish()
    }
}
