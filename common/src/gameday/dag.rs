//! The steps' order: `after` makes a DAG. Kahn's algorithm, taking among
//! the ready steps the one declared first, so the order is the declaration
//! order wherever `after` allows it (a run lists its steps this way, and
//! equal specs give equal orders). Twenty lines; a graph crate would not
//! give the tie rule or the cycle's path for a message.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use super::{GameDaySpec, Step};

/// The steps' `after` has a cycle: the ids along it, first repeated last
/// (`warmup -> inject -> warmup`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CycleError(pub Vec<String>);

impl fmt::Display for CycleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cycle {}", self.0.join(" -> "))
    }
}

impl std::error::Error for CycleError {}

/// Indices of `steps` in a valid order. References to unknown ids are
/// ignored here (validation reports them); duplicate ids resolve to the
/// first step with that id.
pub(super) fn order(steps: &[Step]) -> Result<Vec<usize>, CycleError> {
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .rev()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    // deps[i]: the distinct known steps that i waits for.
    let deps: Vec<BTreeSet<usize>> = steps
        .iter()
        .map(|s| s.after.iter().filter_map(|a| index.get(a.as_str()).copied()).collect())
        .collect();
    let mut waiting: Vec<usize> = deps.iter().map(BTreeSet::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for (i, d) in deps.iter().enumerate() {
        for &j in d {
            dependents[j].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..steps.len()).filter(|&i| waiting[i] == 0).collect();
    let mut out = Vec::with_capacity(steps.len());
    while let Some(i) = ready.pop_first() {
        out.push(i);
        for &k in &dependents[i] {
            waiting[k] -= 1;
            if waiting[k] == 0 {
                ready.insert(k);
            }
        }
    }
    if out.len() == steps.len() {
        return Ok(out);
    }
    // Every step left waits for another step left: walk `after` from the
    // first one until a step repeats; the walk from there is a cycle.
    let left: BTreeSet<usize> = (0..steps.len()).filter(|i| !out.contains(i)).collect();
    let mut path: Vec<usize> = Vec::new();
    let mut at = left.first().copied().unwrap_or(0);
    loop {
        if let Some(pos) = path.iter().position(|&p| p == at) {
            let mut ids: Vec<String> = path[pos..].iter().map(|&p| steps[p].id.clone()).collect();
            ids.push(steps[at].id.clone());
            return Err(CycleError(ids));
        }
        path.push(at);
        // A step left has a dependency left (else it would have been ready).
        match deps[at].iter().find(|d| left.contains(d)) {
            Some(&next) => at = next,
            None => return Err(CycleError(path.iter().map(|&p| steps[p].id.clone()).collect())),
        }
    }
}

impl GameDaySpec {
    /// The steps in an order that respects `after`, ties by declaration
    /// order; or the cycle that prevents one.
    pub fn step_order(&self) -> Result<Vec<&Step>, CycleError> {
        Ok(order(&self.steps)?.into_iter().map(|i| &self.steps[i]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{GateAction, WaitAction};
    use super::*;
    use std::time::Duration;

    fn step(id: &str, after: &[&str]) -> Step {
        Step {
            id: id.to_owned(),
            after: after.iter().map(|s| (*s).to_owned()).collect(),
            fault: None,
            wait: Some(WaitAction {
                duration: Duration::from_secs(1),
            }),
            gate: None,
            load: None,
            expect: None,
            optional: false,
        }
    }

    fn ids(steps: &[Step]) -> Vec<&str> {
        order(steps)
            .expect("no cycle")
            .into_iter()
            .map(|i| steps[i].id.as_str())
            .collect()
    }

    #[test]
    fn a_serial_chain_is_ordered_by_after_not_by_declaration() {
        let steps = [step("c", &["b"]), step("b", &["a"]), step("a", &[])];
        assert_eq!(ids(&steps), ["a", "b", "c"]);
    }

    #[test]
    fn parallel_steps_keep_declaration_order() {
        // a and b start together; c waits for both; d waits for a only and
        // is declared after c, so it comes after c.
        let steps = [
            step("b", &[]),
            step("a", &[]),
            step("c", &["a", "b"]),
            step("d", &["a"]),
        ];
        assert_eq!(ids(&steps), ["b", "a", "c", "d"]);
        let steps = [step("x", &[]), step("late", &["x"]), step("y", &[])];
        assert_eq!(ids(&steps), ["x", "late", "y"], "ready steps by declaration order");
    }

    #[test]
    fn a_gate_orders_what_follows_it() {
        let mut gate = step("approve", &["baseline"]);
        gate.wait = None;
        gate.gate = Some(GateAction::default());
        let steps = [
            step("inject", &["approve"]),
            step("baseline", &[]),
            gate,
            step("observe", &["baseline"]),
        ];
        assert_eq!(ids(&steps), ["baseline", "approve", "inject", "observe"]);
    }

    #[test]
    fn cycles_are_reported_with_their_path() {
        let steps = [step("warmup", &["inject"]), step("inject", &["warmup"]), step("c", &[])];
        let e = order(&steps).expect_err("cycle");
        assert_eq!(e.to_string(), "cycle warmup -> inject -> warmup");
        let steps = [step("a", &[]), step("self", &["self"])];
        assert_eq!(order(&steps).expect_err("cycle").to_string(), "cycle self -> self");
        // A step that waits on a cycle is not part of the message.
        let steps = [
            step("tail", &["x"]),
            step("x", &["y"]),
            step("y", &["z"]),
            step("z", &["x"]),
        ];
        assert_eq!(order(&steps).expect_err("cycle").to_string(), "cycle x -> y -> z -> x");
    }

    #[test]
    fn unknown_and_repeated_references_do_not_break_the_order() {
        let steps = [step("a", &["ghost"]), step("b", &["a", "a"])];
        assert_eq!(ids(&steps), ["a", "b"]);
    }
}
