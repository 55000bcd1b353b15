//! A PEP 440 conflict checker: proves that no version satisfies a set of
//! specifiers (and says nothing when unsure).

use crate::pep440::{Op, Version};

/// Whether no version can satisfy all of `specs` (false when unsure).
pub(crate) fn unsatisfiable(specs: &[(Op, String)]) -> bool {
    // A pin must satisfy everything else.
    for (op, v) in specs {
        if *op == Op::Eq && !v.ends_with(".*") {
            let Some(pin) = Version::parse(v) else {
                continue;
            };
            for (op2, v2) in specs {
                if *op2 == Op::Arbitrary {
                    continue;
                }
                if Version::parse(v2.trim_end_matches(".*")).is_none() {
                    continue;
                }
                if !pin.matches(*op2, v2) {
                    return true;
                }
            }
        }
        if *op == Op::Arbitrary {
            for (op2, v2) in specs {
                if *op2 == Op::Arbitrary && v2 != v {
                    return true;
                }
            }
        }
    }
    // Bounds: the greatest lower bound above the least upper bound.
    let mut lowers: Vec<(Version, String, bool)> = Vec::new(); // (version, text, inclusive)
    let mut uppers: Vec<(String, bool)> = Vec::new();
    for (op, v) in specs {
        if v.ends_with(".*") {
            continue;
        }
        let Some(ver) = Version::parse(v) else {
            continue;
        };
        match op {
            Op::Ge => lowers.push((ver, v.clone(), true)),
            Op::Gt => lowers.push((ver, v.clone(), false)),
            Op::Le => uppers.push((v.clone(), true)),
            Op::Lt => uppers.push((v.clone(), false)),
            Op::Compatible => {
                let rel = ver.release();
                if rel.len() >= 2 {
                    let mut up: Vec<u64> = rel[..rel.len() - 1].to_vec();
                    if let Some(last) = up.last_mut() {
                        *last += 1;
                    }
                    let up = up.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
                    uppers.push((up, false));
                }
                lowers.push((ver, v.clone(), true));
            }
            _ => {}
        }
    }
    for (lv, _, linc) in &lowers {
        for (u, uinc) in &uppers {
            if lv.matches(Op::Gt, u) {
                return true;
            }
            if lv.matches(Op::Eq, u) && !(*linc && *uinc) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsatisfiable_specs() {
        let s = |v: &[(&str, &str)]| -> Vec<(Op, String)> {
            v.iter()
                .map(|(o, v)| (Op::split(o).unwrap().0, v.to_string()))
                .collect()
        };
        for bad in [
            s(&[("==", "1.26.4"), (">=", "2")]),
            s(&[(">=", "2"), ("<", "2")]),
            s(&[(">", "2"), ("<=", "2")]),
            s(&[("~=", "1.4"), (">=", "2")]),
            s(&[("~=", "1.4.2"), ("<", "1.4")]),
            s(&[("!=", "1.0"), ("==", "1.0")]),
            s(&[("==", "1.*"), ("==", "2.0")]),
            s(&[("===", "a"), ("===", "b")]),
        ] {
            assert!(unsatisfiable(&bad), "{bad:?}");
        }
        for ok in [
            s(&[(">=", "2"), ("<", "3"), ("==", "2.5")]),
            s(&[(">=", "2"), ("<=", "2")]),
            s(&[("~=", "1.4"), ("<", "1.9")]),
            s(&[("!=", "1.0"), (">=", "0.5")]),
            s(&[("==", "1.*"), ("==", "1.2")]),
            s(&[(">=", "1"), ("!=", "1.5")]),
        ] {
            assert!(!unsatisfiable(&ok), "{ok:?}");
        }
    }
}
