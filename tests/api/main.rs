//! One integration test binary: the real app on a random port with real HTTP, a real fake
//! upstream, real SQLite files, and (with TOLLGATE_TEST_BACKEND=mysql) real MySQL and Redis.

// Test code unwraps: a failure is a test failure with its backtrace.
#![allow(clippy::unwrap_used)]

mod absurd;
mod access;
mod admission;
mod admission_edges;
mod aliases;
mod audit;
mod breadth;
mod concurrency;
mod console;
mod faultproxy;
mod faults;
mod first_hour;
mod foundation;
mod health;
mod helpers;
mod key_budgets;
mod ledger;
mod logs;
mod pricing;
mod propagation;
mod proxy;
mod refusals;
mod refused_rows;
mod sdk;
mod secrets_at_rest;
mod shutdown;
mod slow_clients;
mod validation;
mod vocabulary;
