//! Body peeking that loses nothing. STUB.
