//! Retention: deciding which tags and manifests a policy deletes ([`plan`]), reading
//! repositories for it ([`state`]), and planning and running over a policy's repositories
//! ([`run`]).
//!
//! The plan is a pure function of the repositories' state, the policy's rules, the manifests
//! that Pods are running and the clock, so it can be shown before a run and re-computed at
//! run time: a run deletes only what the shown plan and the fresh one agree on.

pub mod plan;
pub mod run;
pub mod state;

pub use plan::{ManifestState, Plan, RepositoryState, TagState, plan_repository};
pub use run::{Outcome, apply, plan};

#[cfg(test)]
mod tests;
