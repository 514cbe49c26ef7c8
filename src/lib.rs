//! Node.js binding of the `trypema` crate. It only converts values and errors; every decision is
//! made by the core crate. `index.js` shapes the compact results returned here into the public
//! `RateLimitDecision` objects.

#![deny(clippy::all)]
// Under `cfg(test)` napi-derive registers no exports, so everything they call looks unused.
#![cfg_attr(test, allow(dead_code))]

mod calls;
mod connect;
mod convert;
mod fast_calls;
mod limiter;
mod runtime;
