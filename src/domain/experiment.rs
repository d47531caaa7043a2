//! Holdouts and split tests: which group a contact is in, decided by a hash
//! of the conversation's `experiment_salt`, the conversation, what is being
//! decided (the holdout, or a split step) and the contact id. Nothing else
//! enters it, so a contact's group is the same in every replay, process and
//! partition, whatever the order of events.

/// What a draw decides.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// The conversation's holdout.
    Holdout,
    /// The split step with this id (a step may be named `holdout` too: the
    /// tag keeps the two draws apart).
    Split(&'a str),
}

/// A number in `[0, 2^64)` for `contact` in `scope` of `conversation` under
/// `salt`. Parts are length-prefixed and the scope tagged, so no two tuples
/// hash the same bytes.
pub fn draw(salt: &str, conversation: &str, scope: Scope<'_>, contact: &str) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let (tag, id) = match scope {
        Scope::Holdout => (0u8, ""),
        Scope::Split(step) => (1u8, step),
    };
    for part in [salt, conversation] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(&[tag]);
    for part in [id, contact] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.digest()
}

/// Whether the draw falls in the first `share` (0 to 1) of the range.
pub fn within(draw: u64, share: f64) -> bool {
    // `share` is validated to [0, 1]. The largest draws round to 2^64 as
    // floats: a share of 1 takes them explicitly.
    share >= 1.0 || (draw as f64) < share * 18_446_744_073_709_551_616.0
}

/// The branch a draw picks among `weights` (each >= 1): branch `i` gets
/// `weights[i] / sum` of the range, in order.
pub fn pick(draw: u64, weights: &[u32]) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    // The draw scaled onto [0, total) without modulo bias.
    let x = ((u128::from(draw) * u128::from(total)) >> 64) as u64;
    let mut acc = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        acc += u64::from(w);
        if x < acc {
            return i;
        }
    }
    weights.len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_come_out_within_statistical_bounds() {
        let n = 100_000;
        let (mut held, mut branches) = (0, [0u32; 3]);
        for i in 0..n {
            let c = format!("c{i}");
            held += u32::from(within(draw("s", "Winback", Scope::Holdout, &c), 0.1));
            branches[pick(draw("s", "Winback", Scope::Split("ab"), &c), &[1, 1, 2])] += 1;
        }
        // Binomial, 5 standard deviations: 0.1 ± 0.0047, 0.25 ± 0.0068.
        assert!((9_530..=10_470).contains(&held), "{held}");
        for (b, want) in branches.iter().zip([25_000, 25_000, 50_000]) {
            assert!(b.abs_diff(want) < 800, "{branches:?}");
        }
    }

    #[test]
    fn the_draw_depends_on_every_part_and_nothing_else() {
        let h = Scope::Holdout;
        let d = draw("s", "conv", h, "ann");
        assert_eq!(d, draw("s", "conv", h, "ann"));
        assert_ne!(d, draw("t", "conv", h, "ann"));
        assert_ne!(d, draw("s", "conv2", h, "ann"));
        assert_ne!(d, draw("s", "conv", Scope::Split("ab"), "ann"));
        assert_ne!(d, draw("s", "conv", Scope::Split("holdout"), "ann"));
        assert_ne!(d, draw("s", "conv", Scope::Split(""), "ann"));
        assert_ne!(d, draw("s", "conv", h, "bob"));
        // Length prefixes: moving a byte between parts changes the draw.
        assert_ne!(draw("ab", "c", h, "y"), draw("a", "bc", h, "y"));
        assert!(!within(u64::MAX, 0.0) && within(0, 1e-9) && within(u64::MAX, 1.0));
        assert_eq!(pick(0, &[1, 1]), 0);
        assert_eq!(pick(u64::MAX, &[1, 1]), 1);
    }
}
