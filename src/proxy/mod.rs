//! ratewise-proxy, an OpenAI-compatible LLM gateway.

pub mod stats;
