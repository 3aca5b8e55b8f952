//! The transactional relay path (DESIGN.md "relay/"): the durable [`outbox`] (messages rendered
//! once by [`render`], [`dkim`]-signed, with a [`verp`] Return-Path), the [`routes`] out (SMTP smarthost, local
//! sendmail, provider transactional API), failure [`classify`]cation in one place, the delivery
//! [`worker`] with leases, sending [`quota`]s, RFC 8058 one-click [`unsubscribe`], and the [`alerts`] before quotas bite. The `send` / `relay` commands are in
//! `cli::relay`.

pub mod alerts;
pub mod classify;
pub mod dkim;
pub mod doctor;
pub mod outbox;
pub mod quota;
pub mod render;
pub mod routes;
pub mod unsubscribe;
pub mod verp;
pub mod worker;

pub use outbox::{EnqueueError, Enqueued, MessageStatus, Status};
pub use render::{Category, InputError, NewMessage};
pub use worker::{RunSummary, Worker};
