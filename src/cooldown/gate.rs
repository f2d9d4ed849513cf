//! The gate a cooldown attaches to every request it lets through, so that layers below
//! it that hold a request back (the rate limiter's queue) can re-check the cooldown
//! right before the request would take a cell and go upstream.
//!
//! A request passes the cooldown while its key is open, then may wait in a rate
//! limiter's queue. If another request's rate-limited answer starts a cooldown
//! meanwhile, the waiting request must not go out: it would land inside the server's
//! penalty (Telegram doubles it on every such call). The rate limiter calls
//! [`Gates::check`] on the request's extensions before it asks its store for cells;
//! a closed gate finishes the request with the cooldown's [`CoolingDown`] (marked as
//! coming from the gate), and the cooldown does not count that as a new signal.

use std::{fmt, sync::Arc};

use http::Extensions;
use tokio::time::Instant;

use super::{error::CoolingDown, state::Shared};
use crate::key::Key;

/// Every cooldown gate a request passed, outermost first (one per cooldown table).
#[derive(Clone, Default)]
pub(crate) struct Gates {
    gates: Vec<Gate>,
}

#[derive(Clone)]
struct Gate {
    shared: Arc<Shared>,
    key: Key,
    /// The probe's id when the request is the key's half-open probe.
    probe: Option<u64>,
}

impl Gates {
    /// Records on `extensions` that the cooldown `shared` let the request through for
    /// `key` (as the probe `probe`, or not). A gate of the same cooldown already there
    /// (a copy of a request that passed it before) is replaced.
    pub(crate) fn attach(
        extensions: &mut Extensions,
        shared: &Arc<Shared>,
        key: &Key,
        probe: Option<u64>,
    ) {
        let gate = Gate {
            shared: shared.clone(),
            key: key.clone(),
            probe,
        };
        let Some(gates) = extensions.get_mut::<Gates>() else {
            extensions.insert(Gates { gates: vec![gate] });
            return;
        };
        match gates.gates.iter_mut().find(|g| g.shared.id == shared.id) {
            Some(old) => *old = gate,
            None => gates.gates.push(gate),
        }
    }

    /// Whether every gate on `extensions` is open at `now`: `Err` with the first closed
    /// gate's refusal otherwise. A request without gates is always let through.
    pub(crate) fn check(extensions: &Extensions, now: Instant) -> Result<(), CoolingDown> {
        let Some(gates) = extensions.get::<Gates>() else {
            return Ok(());
        };
        gates
            .gates
            .iter()
            .try_for_each(|g| g.shared.check_gate(&g.key, g.probe, now))
    }
}

impl fmt::Debug for Gates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.gates.iter().map(|g| (&g.key, g.probe)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        classify::Verdict,
        cooldown::{events::DefaultOnCooldownEvent, layer::Config, state::Admission},
    };

    fn shared() -> Arc<Shared> {
        Shared::new(Config::default(), Arc::new(DefaultOnCooldownEvent))
    }

    fn admitted(shared: &Arc<Shared>, key: &Key) -> super::super::state::Ticket {
        match shared.admit(key, Instant::now(), None) {
            Admission::Go(ticket) => ticket,
            _ => panic!("expected the key to be open"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_gate_closes_while_its_key_cools_and_opens_for_the_probe_only() {
        let cd = shared();
        let (a, b) = (Key::from("a"), Key::from("b"));
        let mut ext = Extensions::new();
        assert!(Gates::check(&ext, Instant::now()).is_ok(), "no gate: open");

        let first = admitted(&cd, &a);
        Gates::attach(&mut ext, &cd, &a, first.probe_id());
        let mut other = Extensions::new();
        Gates::attach(&mut other, &cd, &b, None);
        assert!(Gates::check(&ext, Instant::now()).is_ok());

        // Another request's 429 cools `a` for 10 s: `a`'s gate closes, `b`'s does not.
        let ticket = admitted(&cd, &a);
        let now = Instant::now();
        cd.report(
            &a,
            ticket,
            Verdict::rate_limited(Some(Duration::from_secs(10))),
            now,
        );
        let err = Gates::check(&ext, now).unwrap_err();
        assert_eq!(err.key().as_str(), "a");
        assert_eq!(err.remaining(), Duration::from_secs(10));
        assert_eq!(err.gate(), Some(cd.id));
        assert!(err.to_string().contains("was not sent"), "{err}");
        assert!(Gates::check(&other, now).is_ok());

        // Half-open: only the probe's own gate is open.
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = admitted(&cd, &a);
        assert!(probe.is_probe());
        let mut probe_ext = Extensions::new();
        Gates::attach(&mut probe_ext, &cd, &a, probe.probe_id());
        assert!(Gates::check(&probe_ext, Instant::now()).is_ok());
        let err = Gates::check(&ext, Instant::now()).unwrap_err();
        assert!(err.is_probing() && err.remaining().is_zero(), "{err:?}");

        // The probe is served: the key is open for everyone again.
        cd.report(&a, probe, Verdict::Success, Instant::now());
        assert!(Gates::check(&ext, Instant::now()).is_ok());
        drop(first);
    }

    #[test]
    fn attaching_twice_to_one_cooldown_replaces_its_gate_and_keeps_others() {
        let (one, two) = (shared(), shared());
        let mut ext = Extensions::new();
        Gates::attach(&mut ext, &one, &Key::from("a"), None);
        Gates::attach(&mut ext, &two, &Key::from("b"), None);
        Gates::attach(&mut ext, &one, &Key::from("c"), Some(7));
        let gates = ext.get::<Gates>().unwrap();
        let seen: Vec<_> = gates
            .gates
            .iter()
            .map(|g| (g.shared.id, g.key.as_str().to_owned(), g.probe))
            .collect();
        assert_eq!(
            seen,
            [
                (one.id, "c".to_owned(), Some(7)),
                (two.id, "b".to_owned(), None)
            ]
        );
    }
}
