//! Which backends a request may go to: the [`Model`] extension, the route table and the
//! route closure.

use std::{collections::HashMap, fmt, sync::Arc};

use http::Request;

use crate::key::{key_of, Key, KeyExtractor, RequestRef, SharedKey};
use crate::vocabulary::{LayerKind, Refusal, RefusalKind};

/// The model a request asks for, as a request extension: what the pool's route table
/// is keyed by unless [`route_key`](super::PoolBuilder::route_key) says otherwise.
///
/// An OpenAI-compatible proxy parses the JSON body anyway (to check it, to rewrite the
/// model name per backend); insert the model it read here. A request without it routes
/// with the empty key, which no table entry matches, so it takes the default route.
///
/// ```
/// use ratewise::pool::Model;
///
/// let mut req = http::Request::post("http://127.0.0.1/v1/chat/completions").body(()).unwrap();
/// req.extensions_mut().insert(Model::new("glm-4"));
/// assert_eq!(req.extensions().get::<Model>().unwrap().as_str(), "glm-4");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Model(Key);

impl Model {
    /// The model `name`.
    pub fn new(name: impl Into<Key>) -> Self {
        Model(name.into())
    }

    /// The model name.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The model name as a [`Key`].
    pub fn key(&self) -> &Key {
        &self.0
    }
}

/// The default route key: the request's [`Model`] extension, else the empty key.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ModelKey;

impl KeyExtractor for ModelKey {
    fn key(&self, request: &RequestRef<'_>) -> Key {
        request
            .extensions()
            .get::<Model>()
            .map(|m| m.0.clone())
            .unwrap_or_else(|| Key::from(""))
    }
}

/// The name of the backend a request is being sent to, set by the pool on each attempt
/// so the pool's cooldown layer keys by backend.
#[derive(Debug, Clone)]
pub(crate) struct BackendName(pub(crate) Key);

/// The pool cooldown's key: the [`BackendName`] extension.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ByBackend;

impl KeyExtractor for ByBackend {
    fn key(&self, request: &RequestRef<'_>) -> Key {
        request
            .extensions()
            .get::<BackendName>()
            .map(|b| b.0.clone())
            .unwrap_or_else(|| Key::from(""))
    }
}

pub(crate) type RouteFn<B> = Arc<dyn Fn(&Request<B>) -> Vec<Key> + Send + Sync>;

/// The validated routing: backend indices, each list in priority order.
pub(crate) enum Routing<B> {
    /// Every request goes to the default candidates.
    All(Arc<[usize]>),
    /// A table keyed by `key`; a miss goes to `default`.
    Table {
        key: SharedKey,
        table: HashMap<Key, Arc<[usize]>>,
        default: Arc<[usize]>,
    },
    /// A closure naming backends; resolved per request.
    Fn {
        route: RouteFn<B>,
        names: HashMap<Key, usize>,
        groups: Arc<[u32]>,
    },
}

impl<B: 'static> Routing<B> {
    /// The candidates of `req`, in priority order.
    pub(crate) fn candidates(&self, req: &Request<B>) -> Result<Arc<[usize]>, Refusal> {
        match self {
            Routing::All(all) => Ok(all.clone()),
            Routing::Table {
                key,
                table,
                default,
            } => {
                let model = key_of(&**key, req);
                let list = table.get(&model).unwrap_or(default);
                if list.is_empty() {
                    return Err(no_route(Some(model)));
                }
                Ok(list.clone())
            }
            Routing::Fn {
                route,
                names,
                groups,
            } => {
                let mut list: Vec<usize> = Vec::new();
                for name in route(req) {
                    match names.get(&name) {
                        Some(&i) if !list.contains(&i) => list.push(i),
                        Some(_) => {}
                        None => tracing::warn!(
                            target: "ratewise::pool",
                            backend = %name,
                            "the route named a backend the pool does not have; ignored"
                        ),
                    }
                }
                if list.is_empty() {
                    return Err(no_route(None));
                }
                by_priority(&mut list, groups);
                Ok(list.into())
            }
        }
    }
}

impl<B> fmt::Debug for Routing<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Routing::All(all) => f.debug_tuple("All").field(all).finish(),
            Routing::Table { table, default, .. } => f
                .debug_struct("Table")
                .field("table", table)
                .field("default", default)
                .finish_non_exhaustive(),
            Routing::Fn { .. } => f.debug_struct("Fn").finish_non_exhaustive(),
        }
    }
}

/// Sorts backend indices by their group (stable: the order within a group is kept).
pub(crate) fn by_priority(list: &mut [usize], groups: &[u32]) {
    list.sort_by_key(|&i| groups.get(i).copied().unwrap_or(u32::MAX));
}

fn no_route(model: Option<Key>) -> Refusal {
    Refusal::new(LayerKind::Pool, RefusalKind::NoRoute { model })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_sort_is_stable_within_a_group() {
        // groups: 0 -> 1, 1 -> 0, 2 -> 1, 3 -> 0
        let groups = [1, 0, 1, 0];
        let mut list = vec![2, 0, 3, 1];
        by_priority(&mut list, &groups);
        assert_eq!(list, [3, 1, 2, 0]);
    }

    #[test]
    fn model_key_reads_the_extension() {
        let mut req = Request::new(());
        assert_eq!(ModelKey.key_of(&req), Key::from(""));
        req.extensions_mut().insert(Model::new("glm-4"));
        assert_eq!(ModelKey.key_of(&req), Key::from("glm-4"));
    }

    #[test]
    fn route_fn_ignores_unknown_and_duplicate_names_and_sorts() {
        let routing: Routing<()> = Routing::Fn {
            route: Arc::new(|_req: &Request<()>| {
                vec![
                    Key::from("b"),
                    Key::from("nope"),
                    Key::from("a"),
                    Key::from("b"),
                ]
            }),
            names: [(Key::from("a"), 0), (Key::from("b"), 1)]
                .into_iter()
                .collect(),
            groups: Arc::from([0u32, 1]),
        };
        assert_eq!(&*routing.candidates(&Request::new(())).unwrap(), &[0, 1]);
        let empty: Routing<()> = Routing::Fn {
            route: Arc::new(|_req: &Request<()>| Vec::new()),
            names: HashMap::new(),
            groups: Arc::from([]),
        };
        assert!(empty.candidates(&Request::new(())).is_err());
    }
}
