//! # latch
//!
//! An OAuth 2.0 token server built around one promise: when a token is revoked, it is dead
//! everywhere, at once, and revoking is cheap. This crate is the binary and its wiring; see
//! `ARCHITECTURE.md` at the repository root for the bird's-eye view.
//!
//! ## Crates
//! - `latch-core`: the OAuth domain (tokens, clients, grants, the revocation engine) and the
//!   storage traits. No HTTP, no SQL.
//! - `latch-store`: the storage traits on SQLite and PostgreSQL, with group commit.
//! - `latch-http`: axum routes that translate HTTP to domain calls.
//! - `latch` (this crate): [`config`] (TOML, environment, flags), [`cli`] (the commands),
//!   [`server`] (opening storage, registering configured clients, serving, shutdown),
//!   [`fd_limit`] (the file-descriptor limit, and the connections it leaves room for).
//! - `latch-bench`: the benchmark (docs/benchmarks.md); not a dependency of anything.

pub mod cli;
pub mod config;
pub mod fd_limit;
pub mod server;
