//! Encoding statistics (permutation tests, FDR, noise ceilings). Being written.
