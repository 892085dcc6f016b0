//! Cross-validation folds for time series: contiguous test blocks with a gap on each side, blocks
//! over a non-contiguous subset of samples (for nested CV), and leave-groups-out (stories).
//!
//! Input: a sample count, or the sorted original sample indices of a subset, or one group label
//! per sample. Output: `Vec<Fold>`, each with sorted `train` and `test` row indices.
//!
//! Why the gap: fMRI samples (TRs) are autocorrelated and the HRF smears each word over ~15 s,
//! so a training TR right next to a test TR leaks the test signal. Samples within `gap` of the
//! test block (in original sample index) are removed from training.

use crate::{Error, Result};

/// One train/test split. Indices are row positions into the data the fold was made for, sorted
/// ascending; `train` and `test` are disjoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fold {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

/// Splits `0..n_samples` into `n_folds` contiguous test blocks (sizes differ by at most one, the
/// larger blocks first, as scikit-learn's `KFold`). Each fold's training set is every sample whose
/// distance to the nearest test sample is greater than `gap`, i.e. the `gap` samples on each side
/// of the test block are left out of both sets.
///
/// Errors when `n_folds < 2`, when `n_samples < n_folds`, or when a fold would have no training
/// sample left.
///
/// ```
/// use cortexflow::encoding::contiguous_block_folds;
/// let folds = contiguous_block_folds(10, 2, 1).unwrap();
/// assert_eq!(folds[0].test, vec![0, 1, 2, 3, 4]);
/// assert_eq!(folds[0].train, vec![6, 7, 8, 9]); // 5 is within the gap
/// ```
pub fn contiguous_block_folds(n_samples: usize, n_folds: usize, gap: usize) -> Result<Vec<Fold>> {
    let ids: Vec<usize> = (0..n_samples).collect();
    block_folds_within(&ids, n_folds, gap)
}

/// Contiguous-block folds over the rows of a subset of samples: row `i` is original sample
/// `sample_ids[i]` (strictly increasing, e.g. the training rows of an outer fold, which have a hole
/// where the outer test block and its gaps were). Test blocks are contiguous runs of rows (sizes
/// differ by at most one); a row is trained on only if its *original* sample index is more than
/// `gap` away from every test row's original index.
///
/// Returned indices are row positions `0..sample_ids.len()`, not original sample indices.
/// With `sample_ids = 0..n` this is [`contiguous_block_folds`].
pub fn block_folds_within(sample_ids: &[usize], n_folds: usize, gap: usize) -> Result<Vec<Fold>> {
    let n = sample_ids.len();
    if n_folds < 2 {
        return Err(Error::Invalid(format!(
            "block folds: expected n_folds >= 2, found {n_folds}"
        )));
    }
    if n < n_folds {
        return Err(Error::Invalid(format!(
            "block folds: {n} samples cannot make {n_folds} non-empty test blocks"
        )));
    }
    if let Some(w) = sample_ids.windows(2).position(|w| w[0] >= w[1]) {
        return Err(Error::Invalid(format!(
            "block folds: sample ids must be strictly increasing, found {} then {} at rows {w} and {}",
            sample_ids[w],
            sample_ids[w + 1],
            w + 1
        )));
    }
    let base = n / n_folds;
    let extra = n % n_folds;
    let mut folds = Vec::with_capacity(n_folds);
    let mut start = 0;
    for k in 0..n_folds {
        let size = base + usize::from(k < extra);
        let end = start + size; // test rows: start..end
        let (first_id, last_id) = (sample_ids[start], sample_ids[end - 1]);
        // rows before the block have smaller ids (sorted), rows after have larger ones
        let train: Vec<usize> = (0..start)
            .filter(|&j| first_id - sample_ids[j] > gap)
            .chain((end..n).filter(|&j| sample_ids[j] - last_id > gap))
            .collect();
        if train.is_empty() {
            return Err(Error::Invalid(format!(
                "block folds: fold {k} (test rows {start}..{end} of {n}) leaves no training sample with a gap of \
                 {gap}; use fewer folds or a smaller gap"
            )));
        }
        folds.push(Fold {
            train,
            test: (start..end).collect(),
        });
        start = end;
    }
    Ok(folds)
}

/// Leave-groups-out folds (e.g. leave-stories-out): `groups[i]` is the group of sample `i`. The
/// distinct groups, in ascending order of label, are dealt round-robin to the folds (group number
/// `g` in that order goes to fold `g % n_folds`); a fold's test set is every sample of its groups
/// and its training set every other sample. No gap: groups are separate recordings.
///
/// Errors when `n_folds < 2` or when there are fewer distinct groups than folds.
pub fn leave_groups_out_folds(groups: &[usize], n_folds: usize) -> Result<Vec<Fold>> {
    if n_folds < 2 {
        return Err(Error::Invalid(format!(
            "leave-groups-out folds: expected n_folds >= 2, found {n_folds}"
        )));
    }
    let mut labels: Vec<usize> = groups.to_vec();
    labels.sort_unstable();
    labels.dedup();
    if labels.len() < n_folds {
        return Err(Error::Invalid(format!(
            "leave-groups-out folds: {} distinct groups cannot fill {n_folds} folds",
            labels.len()
        )));
    }
    let fold_of = |g: usize| labels.binary_search(&g).expect("label is present") % n_folds;
    let mut folds: Vec<Fold> = (0..n_folds)
        .map(|_| Fold {
            train: Vec::new(),
            test: Vec::new(),
        })
        .collect();
    for (i, &g) in groups.iter().enumerate() {
        let f = fold_of(g);
        for (k, fold) in folds.iter_mut().enumerate() {
            if k == f {
                fold.test.push(i);
            } else {
                fold.train.push(i);
            }
        }
    }
    Ok(folds)
}

/// Checks folds against a data set of `n_samples` rows: every index in range, `test` and `train`
/// non-empty and disjoint. With `disjoint_tests`, no sample may be tested by two folds (needed to
/// assemble held-out predictions).
pub fn check_folds(folds: &[Fold], n_samples: usize, disjoint_tests: bool) -> Result<()> {
    if folds.is_empty() {
        return Err(Error::Invalid("folds: expected at least one fold, found none".into()));
    }
    let mut tested_by: Vec<Option<usize>> = vec![None; if disjoint_tests { n_samples } else { 0 }];
    for (k, fold) in folds.iter().enumerate() {
        if fold.train.is_empty() || fold.test.is_empty() {
            return Err(Error::Invalid(format!(
                "fold {k}: expected non-empty train and test sets, found {} train and {} test rows",
                fold.train.len(),
                fold.test.len()
            )));
        }
        let mut role = vec![0u8; n_samples];
        for (set, tag) in [(&fold.train, 1u8), (&fold.test, 2u8)] {
            for &i in set {
                if i >= n_samples {
                    return Err(Error::Invalid(format!(
                        "fold {k}: row index {i} out of range for {n_samples} samples"
                    )));
                }
                if role[i] != 0 {
                    return Err(Error::Invalid(format!(
                        "fold {k}: row {i} appears twice (train and test must be disjoint, without repeats)"
                    )));
                }
                role[i] = tag;
            }
        }
        if disjoint_tests {
            for &i in &fold.test {
                if let Some(j) = tested_by[i] {
                    return Err(Error::Invalid(format!(
                        "row {i} is in the test set of both fold {j} and fold {k}"
                    )));
                }
                tested_by[i] = Some(k);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_differ_in_size_by_at_most_one_and_cover_everything() {
        let folds = contiguous_block_folds(11, 3, 0).unwrap();
        let sizes: Vec<usize> = folds.iter().map(|f| f.test.len()).collect();
        assert_eq!(sizes, vec![4, 4, 3]);
        assert_eq!(folds[1].test, vec![4, 5, 6, 7]);
        assert_eq!(folds[1].train, vec![0, 1, 2, 3, 8, 9, 10]);
    }

    #[test]
    fn the_gap_removes_that_many_samples_on_each_side() {
        let folds = contiguous_block_folds(12, 3, 2).unwrap();
        assert_eq!(folds[1].test, vec![4, 5, 6, 7]);
        assert_eq!(folds[1].train, vec![0, 1, 10, 11]);
        assert_eq!(folds[0].train, vec![6, 7, 8, 9, 10, 11]);
    }

    #[test]
    fn too_few_samples_or_folds_are_errors() {
        assert!(contiguous_block_folds(10, 1, 0).is_err());
        assert!(contiguous_block_folds(3, 4, 0).is_err());
        // middle block of 3 with gap 3 on each side leaves nothing
        assert!(contiguous_block_folds(9, 3, 3).is_err());
    }

    #[test]
    fn blocks_within_a_subset_measure_the_gap_in_original_indices() {
        // rows 0..3 are samples 0..3, rows 3..6 are samples 10..13
        let ids = [0, 1, 2, 10, 11, 12];
        let folds = block_folds_within(&ids, 2, 2).unwrap();
        // test rows 0,1,2 (samples 0..=2): samples 10.. are > 2 away, all kept
        assert_eq!(folds[0].train, vec![3, 4, 5]);
        assert_eq!(folds[1].train, vec![0, 1, 2]);
        assert!(block_folds_within(&[0, 2, 1], 2, 0).is_err());
    }

    #[test]
    fn groups_are_dealt_round_robin_in_sorted_order() {
        let groups = [7, 7, 3, 3, 5, 9, 9];
        let folds = leave_groups_out_folds(&groups, 2).unwrap();
        // sorted labels 3,5,7,9 → folds 0,1,0,1
        assert_eq!(folds[0].test, vec![0, 1, 2, 3]);
        assert_eq!(folds[1].test, vec![4, 5, 6]);
        assert_eq!(folds[0].train, vec![4, 5, 6]);
        assert!(leave_groups_out_folds(&groups, 5).is_err());
    }

    #[test]
    fn fold_checks_catch_overlaps_and_out_of_range_rows() {
        let ok = vec![
            Fold {
                train: vec![2, 3],
                test: vec![0, 1],
            },
            Fold {
                train: vec![0, 1],
                test: vec![2, 3],
            },
        ];
        assert!(check_folds(&ok, 4, true).is_ok());
        assert!(check_folds(&ok, 3, true).is_err());
        let overlap = vec![Fold {
            train: vec![1, 2],
            test: vec![0, 1],
        }];
        assert!(check_folds(&overlap, 4, false).is_err());
        let twice = vec![ok[0].clone(), ok[0].clone()];
        assert!(check_folds(&twice, 4, false).is_ok());
        assert!(check_folds(&twice, 4, true).is_err());
    }
}
