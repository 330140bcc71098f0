//! Billing rules: money, the cost function, the window function, admission and its estimate.

pub mod admission;
pub mod balance;
pub mod cost;
pub mod estimate;
pub mod key_budget;
pub mod money;
pub mod shared;
pub mod windows;
