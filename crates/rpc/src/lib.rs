//! spinblk's control plane speaks SPDK's JSON-RPC: JSON-RPC 2.0 over a unix stream socket with
//! no framing (requests back to back, each answer followed by "\n"), batches and notifications,
//! SPDK's method names, parameters and result shapes ([`SpdkMethods`]), served by a thread per
//! client ([`RpcServer`]) so neither a slow method nor a stalled client holds up the others or
//! the reactors. [`spdk_config::load`] applies an SPDK `--json` configuration through the same
//! methods.
#![deny(missing_docs)]

pub mod framing;
pub mod jsonrpc;
mod methods;
mod server;
pub mod spdk_config;

pub use jsonrpc::{handle_frame, Handler, Outcome, RpcError};
pub use methods::{target_error, SpdkMethods, METHODS, SPDK_COMPAT, TICK_RATE, TRANSPORT};
pub use server::{RpcServer, DEFAULT_RPC_SOCKET, MAX_CLIENTS, MAX_REQUEST_BYTES};
