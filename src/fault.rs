//! Test-only fault injection: [`hit`] panics at a named point when a test armed it, so tests
//! can check that a worker dying mid-job ends the job as failed (partial results kept) instead
//! of leaving it "running".
//!
//! Points are armed in-process with [`arm`] or, for subprocess tests, with the environment
//! variable [`FAULT_ENV`] (`MASKSTUDIO_FAULT=predict` or `predict:2` to let two hits pass
//! first; several points separated by commas). When nothing is armed, [`hit`] costs one atomic
//! load. Arming is process-global: tests in one binary run on parallel threads, so each test
//! arms a point name only it reaches.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

/// Environment variable that arms points in a child process (`name[:skip],...`).
pub const FAULT_ENV: &str = "MASKSTUDIO_FAULT";

/// The environment was not read yet.
const UNKNOWN: u8 = 0;
/// Nothing is armed.
const IDLE: u8 = 1;
/// At least one point is armed.
const ARMED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Armed points: name and how many hits still pass before the panic.
static POINTS: Mutex<Vec<(String, usize)>> = Mutex::new(Vec::new());

fn points() -> std::sync::MutexGuard<'static, Vec<(String, usize)>> {
    // A panic while holding the lock cannot leave the list half-written.
    POINTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The points of a [`FAULT_ENV`] value: `name[:skip]` separated by commas (a skip that is not
/// a number counts as 0).
fn parse(spec: &str) -> Vec<(String, usize)> {
    spec.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| match part.split_once(':') {
            Some((n, s)) => (n.trim().to_owned(), s.trim().parse().unwrap_or(0)),
            None => (part.to_owned(), 0),
        })
        .collect()
}

/// Reads [`FAULT_ENV`] once (later calls do nothing).
fn init_from_env(list: &mut Vec<(String, usize)>) {
    if STATE.load(Ordering::Acquire) != UNKNOWN {
        return;
    }
    if let Ok(spec) = std::env::var(FAULT_ENV) {
        list.extend(parse(&spec));
    }
    let state = if list.is_empty() { IDLE } else { ARMED };
    STATE.store(state, Ordering::Release);
}

/// Arms `name`: the hit after `skip` passing hits panics (once; the point is then disarmed).
pub fn arm(name: &str, skip: usize) {
    let mut list = points();
    init_from_env(&mut list);
    list.retain(|(n, _)| n != name);
    list.push((name.to_owned(), skip));
    STATE.store(ARMED, Ordering::Release);
}

/// Disarms `name` (a test that armed a point it may not reach calls this at its end).
pub fn disarm(name: &str) {
    let mut list = points();
    init_from_env(&mut list);
    list.retain(|(n, _)| n != name);
    if list.is_empty() {
        STATE.store(IDLE, Ordering::Release);
    }
}

/// Whether `name` is armed now.
pub fn is_armed(name: &str) -> bool {
    if STATE.load(Ordering::Acquire) == IDLE {
        return false;
    }
    let mut list = points();
    init_from_env(&mut list);
    list.iter().any(|(n, _)| n == name)
}

/// A fault point: panics with `injected fault at <name>` when `name` is armed and its passing
/// hits are used up. Does nothing (one atomic load) when no point is armed.
pub fn hit(name: &str) {
    if STATE.load(Ordering::Acquire) == IDLE {
        return;
    }
    let fire = {
        let mut list = points();
        init_from_env(&mut list);
        match list.iter().position(|(n, _)| n == name) {
            Some(i) if list[i].1 == 0 => {
                list.remove(i);
                if list.is_empty() {
                    STATE.store(IDLE, Ordering::Release);
                }
                true
            }
            Some(i) => {
                list[i].1 -= 1;
                false
            }
            None => false,
        }
    };
    if fire {
        panic!("injected fault at {name}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_name_points_and_their_passing_hits() {
        assert_eq!(
            parse("predict, train-validation:2,,eval:x"),
            [
                ("predict".to_owned(), 0),
                ("train-validation".to_owned(), 2),
                ("eval".to_owned(), 0)
            ]
        );
        assert!(parse("").is_empty());
    }

    #[test]
    fn an_armed_point_panics_after_its_passing_hits_then_disarms() {
        let name = "fault-unit-test-point";
        hit(name);
        arm(name, 2);
        assert!(is_armed(name));
        hit(name);
        hit(name);
        let caught = std::panic::catch_unwind(|| hit(name)).unwrap_err();
        assert_eq!(
            caught.downcast_ref::<String>().map(String::as_str),
            Some("injected fault at fault-unit-test-point")
        );
        assert!(!is_armed(name));
        hit(name);
        arm(name, 0);
        disarm(name);
        hit(name);
    }
}
