//! Mock upstreams on 127.0.0.1. STUB.
