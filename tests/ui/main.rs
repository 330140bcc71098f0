//! The admin web UI: one integration test binary. The real app on a random port with real
//! HTTP (and, with TOLLGATE_TEST_BACKEND=mysql, real MySQL and Redis); the pages read as a
//! browser without JavaScript would (`pages`), and in headless Chromium (`browser`).

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod browser;
mod pages;
mod web;
mod webdriver;
