//! The model-based test: random sequences of writer actions (append, partial line, rotate by
//! rename, late writes to the renamed file, copytruncate, delete, crash-and-restart) applied to
//! the [`Harness`]. The model is a list of the lines appended; the check: every appended line
//! is delivered, nothing else is, and a line is delivered twice only if a crash happened.

use super::*;

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..2usize, 1..6u8).prop_map(|(stream, lines)| Action::Append { stream, lines }),
        2 => (0..2usize).prop_map(|stream| Action::AppendPartial { stream }),
        2 => (0..2usize, any::<bool>()).prop_map(|(stream, matched)| Action::Rotate { stream, matched }),
        1 => (0..2usize).prop_map(|stream| Action::Reopen { stream }),
        1 => (0..2usize).prop_map(|stream| Action::CopyTruncate { stream }),
        1 => (0..8usize).prop_map(|which| Action::Delete { which }),
        6 => (any::<bool>(), any::<bool>()).prop_map(|(rescan, all)| Action::Step { rescan, all }),
        4 => (0..64usize, 1..4u8).prop_map(|(pick, count)| Action::Deliver { pick, count }),
        1 => Just(Action::Sleep),
        1 => Just(Action::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn tail_delivers_every_line_at_least_once(
        initial in 0..5u8,
        from_beginning in any::<bool>(),
        // 1 and 2: fewer descriptors than files, which then take turns.
        max_open_files in prop_oneof![Just(1usize), Just(2), Just(64)],
        actions in proptest::collection::vec(action(), 1..60),
    ) {
        let mut h = Harness::with_max_open_files(initial, from_beginning, max_open_files);
        for a in &actions {
            h.apply(a);
        }
        h.check()?;
    }
}
