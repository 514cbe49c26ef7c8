//! Node.js binding of the `trypema` crate. It only converts values and errors; every decision is
//! made by the core crate. `index.js` shapes the compact results returned here into the public
//! `RateLimitDecision` objects.

#![deny(clippy::all)]

mod convert;
mod limiter;
