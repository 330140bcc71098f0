//! Billing rules: money, the cost function, the window function and admission.

pub mod admission;
pub mod balance;
pub mod cost;
pub mod money;
pub mod windows;
