//! # latch-core: the OAuth 2.0 domain of latch
//!
//! This crate knows OAuth and nothing else: no HTTP, no SQL, and no async runtime type in its
//! API. The HTTP layer (`latch-http`) translates requests into calls on [`Authority`]; the
//! storage layer (`latch-store`) implements the traits in [`store`].
//!
//! ## Layout
//! - [`id`], [`scope`], [`token`]: the vocabulary. Identifiers are validated newtypes; a
//!   token is minted from the OS CSPRNG and only its [`token::TokenHash`] is ever stored.
//! - [`client`] and [`secret`]: registered clients, their argon2id secrets, and the
//!   verification cache that keeps argon2 off the hot path.
//! - [`grant`]: grants (token families), stored token state, and the write commands
//!   ([`grant::Revocation`], [`grant::Rotation`]) that storage executes atomically.
//! - [`store`]: the storage traits, one per capability; [`commits`]: the counters a
//!   back-end's group commit keeps for `/metrics`.
//! - [`Authority`] (in `authority.rs`) with one module per flow: `grant_flow/` (token
//!   endpoint grants: `client_credentials.rs`, `refresh.rs`), [`revoke`] (the revocation
//!   engine every revocation route ends in), [`introspect`], [`admin`], [`cleanup`]
//!   (deleting expired rows in bounded batches).
//! - [`audit`]: the audit trail's types; storage records every revocation with it, in the
//!   same transaction.
//! - [`error`]: the domain error enum; the HTTP layer maps it to OAuth error responses.
//! - [`clock`]: time, injectable so tests move it instead of sleeping.

pub mod admin;
pub mod audit;
mod authority;
pub mod cleanup;
pub mod client;
pub mod clock;
pub mod commits;
pub mod error;
pub mod grant;
mod grant_flow;
pub mod id;
pub mod introspect;
pub mod metadata;
pub mod revoke;
pub mod scope;
pub mod secret;
pub mod store;
pub mod token;

pub use authority::{Authority, Credentials};
pub use error::{Error, StoreError};
pub use grant_flow::IssuedTokens;
