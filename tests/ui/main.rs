//! The admin web UI: one integration test binary. The real app on a random port with real
//! HTTP (and, with TOLLGATE_TEST_BACKEND=mysql, real MySQL and Redis); the pages read as a
//! browser without JavaScript would (`pages`), and in headless Chromium (`browser`).

// Test code unwraps: a failure is a test failure with its backtrace.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod browser;
mod concurrency;
mod console;
mod key_budgets;
mod pages;
mod web;
mod webdriver;
