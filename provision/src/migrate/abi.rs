//! Binary wheels built against the numpy 1.x ABI: pinned below their first
//! numpy-2 build, they fail under the numpy 2 a resolver picks today
//! (`numpy.core.multiarray failed to import`), so the pin needs `numpy<2`
//! beside it.

use crate::pep440::{Op, Version};
use crate::requirement::{Requirement, Source};

/// Distributions whose wheels before the given version were built against
/// numpy 1.x only (the version is the first one built against numpy 2).
pub(crate) const NUMPY1_WHEELS: [(&str, &str); 9] = [
    ("opencv-python", "4.10.0.82"),
    ("opencv-python-headless", "4.10.0.82"),
    ("opencv-contrib-python", "4.10.0.82"),
    ("opencv-contrib-python-headless", "4.10.0.82"),
    ("numba", "0.60.0"),
    ("scipy", "1.13.0"),
    ("pandas", "2.2.2"),
    ("scikit-learn", "1.4.2"),
    ("onnxruntime", "1.19.0"),
];

/// When `req` allows only releases built against numpy 1.x, the first
/// numpy-2 build it excludes (`4.10.0.82` for `opencv-python<=4.7.0.72`).
pub(crate) fn numpy1_only(req: &Requirement) -> Option<&'static str> {
    let name = req.name.as_deref()?;
    let (_, first) = NUMPY1_WHEELS.iter().find(|(n, _)| *n == name)?;
    let Source::Index(specs) = &req.source else {
        return None;
    };
    let first_v = Version::parse(first)?;
    // Every version the specifiers allow is below `first`: an upper bound
    // (or a pin) below it.
    let excluded = specs.iter().any(|(op, v)| {
        let v = v.trim_end_matches(".*");
        if Version::parse(v).is_none() {
            return false;
        }
        match op {
            Op::Le | Op::Lt => !first_v.matches(*op, v),
            Op::Eq | Op::Compatible | Op::Arbitrary => {
                !first_v.matches(*op, v) && first_v.matches(Op::Gt, v)
            }
            _ => false,
        }
    });
    excluded.then_some(*first)
}

/// Whether `req` (on numpy) already keeps numpy below 2.
pub(crate) fn keeps_numpy1(req: &Requirement) -> bool {
    if req.name.as_deref() != Some("numpy") {
        return false;
    }
    let Source::Index(specs) = &req.source else {
        return false;
    };
    let two = Version::parse("2").expect("a version");
    specs.iter().any(|(op, v)| {
        matches!(op, Op::Lt | Op::Le | Op::Eq | Op::Compatible)
            && Version::parse(v.trim_end_matches(".*")).is_some()
            && !two.matches(*op, v)
    })
}

/// Whether `req` (on numpy) asks for numpy 2 or later only.
pub(crate) fn needs_numpy2(req: &Requirement) -> bool {
    if req.name.as_deref() != Some("numpy") {
        return false;
    }
    let Source::Index(specs) = &req.source else {
        return false;
    };
    let below = Version::parse("1.99").expect("a version");
    specs.iter().any(|(op, v)| {
        matches!(op, Op::Ge | Op::Gt | Op::Eq | Op::Compatible)
            && Version::parse(v.trim_end_matches(".*")).is_some()
            && !below.matches(*op, v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Requirement {
        Requirement::parse(s).unwrap()
    }

    #[test]
    fn old_binary_pins_need_numpy1() {
        assert_eq!(
            numpy1_only(&r("opencv-python-headless[ffmpeg]<=4.7.0.72")),
            Some("4.10.0.82")
        );
        assert_eq!(
            numpy1_only(&r("opencv-python==4.8.1.78")),
            Some("4.10.0.82")
        );
        assert_eq!(numpy1_only(&r("numba<0.59")), Some("0.60.0"));
        assert_eq!(numpy1_only(&r("scipy~=1.11.0")), Some("1.13.0"));
        for ok in [
            "opencv-python",
            "opencv-python>=4.5.0",
            "opencv-python<5",
            "opencv-python==4.10.0.84",
            "numba>=0.58",
            "pillow<9",
        ] {
            assert_eq!(numpy1_only(&r(ok)), None, "{ok}");
        }
        assert!(keeps_numpy1(&r("numpy<2")));
        assert!(keeps_numpy1(&r("numpy==1.26.4")));
        assert!(!keeps_numpy1(&r("numpy>=1.19")));
        assert!(needs_numpy2(&r("numpy>=2")));
        assert!(needs_numpy2(&r("numpy==2.1.0")));
        assert!(!needs_numpy2(&r("numpy>=1.25")));
    }
}
