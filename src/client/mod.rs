//! The sending side's network half: what a destination address may be ([`address`]),
//! per-destination dispatch (`dispatch.rs`), pooled connections that survive drops
//! (`connection.rs`), and the reconnection policy ([`backoff`]). The pipeline feeds it;
//! [`crate::transfer`] wires them together.

pub(crate) mod address;
pub(crate) mod backoff;
pub(crate) mod connection;
pub(crate) mod dispatch;
mod files;
mod reread;
