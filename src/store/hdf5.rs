//! Reading 2-D numeric HDF5 datasets (the ds003020 `.hf5` response files) through the system's
//! HDF5 C library, loaded at run time.
//!
//! The library is opened on first use with `dlopen` (no build-time dependency, no HDF5 headers):
//! `$CORTEXFLOW_HDF5_LIB` when set, else Debian's `libhdf5_serial.so.103` (package
//! `libhdf5-103-1`, installed by `scripts/setup.sh`), `libhdf5_serial.so.310`, `libhdf5.so.103`,
//! `libhdf5.so.310`, `libhdf5.so`. HDF5 ≥ 1.10 is required (64-bit object ids). The serial library
//! is not thread-safe, so every call holds one process-wide lock.
//!
//! Only what the response readers need: the shape of a dataset, and a block of columns of it
//! (a hyperslab, converted to `f64` by the library from any integer or float type). Errors name
//! the file, the dataset, and what was expected; HDF5's own error printing is switched off.
//!
//! May import: `error`, `paths`.

use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::ops::Range;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use ndarray::Array2;

use crate::{Error, Result};

type Hid = i64;
type Herr = c_int;
type Htri = c_int;
type Hsize = u64;

const H5F_ACC_RDONLY: c_uint = 0;
const H5F_ACC_TRUNC: c_uint = 2;
const H5S_ALL: Hid = 0;
const H5P_DEFAULT: Hid = 0;
const H5E_DEFAULT: Hid = 0;
const H5S_SELECT_SET: c_int = 0;
const H5T_INTEGER: c_int = 0;
const H5T_FLOAT: c_int = 1;

/// Library names tried in order when `$CORTEXFLOW_HDF5_LIB` is not set.
pub const CANDIDATES: &[&str] = &[
    "libhdf5_serial.so.103",
    "libhdf5_serial.so.310",
    "libhdf5.so.103",
    "libhdf5.so.310",
    "libhdf5_serial.so",
    "libhdf5.so",
    "libhdf5.dylib",
];

struct Api {
    _lib: libloading::Library,
    name: String,
    version: (u32, u32, u32),
    fis_hdf5: unsafe extern "C" fn(*const c_char) -> Htri,
    fopen: unsafe extern "C" fn(*const c_char, c_uint, Hid) -> Hid,
    fclose: unsafe extern "C" fn(Hid) -> Herr,
    lexists: unsafe extern "C" fn(Hid, *const c_char, Hid) -> Htri,
    dopen: unsafe extern "C" fn(Hid, *const c_char, Hid) -> Hid,
    dclose: unsafe extern "C" fn(Hid) -> Herr,
    dget_space: unsafe extern "C" fn(Hid) -> Hid,
    dget_type: unsafe extern "C" fn(Hid) -> Hid,
    dread: unsafe extern "C" fn(Hid, Hid, Hid, Hid, Hid, *mut c_void) -> Herr,
    sget_ndims: unsafe extern "C" fn(Hid) -> c_int,
    sget_dims: unsafe extern "C" fn(Hid, *mut Hsize, *mut Hsize) -> c_int,
    sselect_hyperslab: unsafe extern "C" fn(Hid, c_int, *const Hsize, *const Hsize, *const Hsize, *const Hsize) -> Herr,
    screate_simple: unsafe extern "C" fn(c_int, *const Hsize, *const Hsize) -> Hid,
    sclose: unsafe extern "C" fn(Hid) -> Herr,
    tget_class: unsafe extern "C" fn(Hid) -> c_int,
    tclose: unsafe extern "C" fn(Hid) -> Herr,
    fcreate: unsafe extern "C" fn(*const c_char, c_uint, Hid, Hid) -> Hid,
    dcreate: unsafe extern "C" fn(Hid, *const c_char, Hid, Hid, Hid, Hid, Hid) -> Hid,
    dwrite: unsafe extern "C" fn(Hid, Hid, Hid, Hid, Hid, *const c_void) -> Herr,
    native_double: Hid,
    ieee_f64le: Hid,
}

/// The loaded library (or why it could not be loaded), behind the lock every call takes.
static API: OnceLock<std::result::Result<Mutex<Api>, String>> = OnceLock::new();

fn load() -> std::result::Result<Mutex<Api>, String> {
    let names: Vec<String> = match std::env::var("CORTEXFLOW_HDF5_LIB") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => CANDIDATES.iter().map(|s| s.to_string()).collect(),
    };
    let mut tried = Vec::new();
    for name in &names {
        // SAFETY: loading a shared library runs its initialisers; HDF5's are benign.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => return bind(lib, name).map(Mutex::new),
            Err(e) => tried.push(format!("{name}: {e}")),
        }
    }
    Err(format!(
        "the HDF5 C library could not be loaded (tried {}). Install it (Debian/Ubuntu: apt-get install \
         libhdf5-103-1, which scripts/setup.sh does) or point CORTEXFLOW_HDF5_LIB at a libhdf5 shared \
         library ≥ 1.10",
        tried.join("; ")
    ))
}

fn bind(lib: libloading::Library, name: &str) -> std::result::Result<Api, String> {
    macro_rules! sym {
        ($s:literal) => {
            // SAFETY: the signature is the HDF5 ≥ 1.10 C API's for this symbol.
            *unsafe { lib.get($s) }.map_err(|e| format!("{name}: {e}"))?
        };
    }
    let get_version: unsafe extern "C" fn(*mut c_uint, *mut c_uint, *mut c_uint) -> Herr = sym!(b"H5get_libversion\0");
    let open: unsafe extern "C" fn() -> Herr = sym!(b"H5open\0");
    let eset_auto: unsafe extern "C" fn(Hid, *const c_void, *mut c_void) -> Herr = sym!(b"H5Eset_auto2\0");
    let (mut maj, mut min, mut rel) = (0, 0, 0);
    // SAFETY: plain C calls with valid out-pointers.
    unsafe {
        if open() < 0 || get_version(&mut maj, &mut min, &mut rel) < 0 {
            return Err(format!("{name}: H5open failed"));
        }
        eset_auto(H5E_DEFAULT, std::ptr::null(), std::ptr::null_mut());
    }
    if (maj, min) < (1, 10) {
        return Err(format!(
            "{name} is HDF5 {maj}.{min}.{rel}; cortexflow needs ≥ 1.10 (64-bit object ids)"
        ));
    }
    // SAFETY: after H5open these globals hold the ids of the native and file double types.
    let global = |sym: &[u8]| -> std::result::Result<Hid, String> {
        unsafe {
            let p: libloading::Symbol<*const Hid> = lib.get(sym).map_err(|e| format!("{name}: {e}"))?;
            Ok(**p)
        }
    };
    let native_double = global(b"H5T_NATIVE_DOUBLE_g\0")?;
    let ieee_f64le = global(b"H5T_IEEE_F64LE_g\0")?;
    Ok(Api {
        fis_hdf5: sym!(b"H5Fis_hdf5\0"),
        fopen: sym!(b"H5Fopen\0"),
        fclose: sym!(b"H5Fclose\0"),
        lexists: sym!(b"H5Lexists\0"),
        dopen: sym!(b"H5Dopen2\0"),
        dclose: sym!(b"H5Dclose\0"),
        dget_space: sym!(b"H5Dget_space\0"),
        dget_type: sym!(b"H5Dget_type\0"),
        dread: sym!(b"H5Dread\0"),
        sget_ndims: sym!(b"H5Sget_simple_extent_ndims\0"),
        sget_dims: sym!(b"H5Sget_simple_extent_dims\0"),
        sselect_hyperslab: sym!(b"H5Sselect_hyperslab\0"),
        screate_simple: sym!(b"H5Screate_simple\0"),
        sclose: sym!(b"H5Sclose\0"),
        tget_class: sym!(b"H5Tget_class\0"),
        tclose: sym!(b"H5Tclose\0"),
        fcreate: sym!(b"H5Fcreate\0"),
        dcreate: sym!(b"H5Dcreate2\0"),
        dwrite: sym!(b"H5Dwrite\0"),
        native_double,
        ieee_f64le,
        version: (maj, min, rel),
        name: name.to_string(),
        _lib: lib,
    })
}

fn api() -> Result<std::sync::MutexGuard<'static, Api>> {
    match API.get_or_init(load) {
        Ok(m) => Ok(m.lock().unwrap_or_else(|e| e.into_inner())),
        Err(e) => Err(Error::Invalid(e.clone())),
    }
}

/// The loaded library's name and version, e.g. `("libhdf5_serial.so.103", (1, 10, 8))`.
pub fn library() -> Result<(String, (u32, u32, u32))> {
    let a = api()?;
    Ok((a.name.clone(), a.version))
}

/// Closes an HDF5 id when dropped (the lock is held by the caller for the id's whole life).
struct Id<'a> {
    id: Hid,
    close: unsafe extern "C" fn(Hid) -> Herr,
    _api: std::marker::PhantomData<&'a Api>,
}

impl Drop for Id<'_> {
    fn drop(&mut self) {
        // SAFETY: `id` was returned valid (≥ 0) by the matching open call and is closed once.
        unsafe { (self.close)(self.id) };
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.to_string_lossy().as_bytes())
        .map_err(|_| Error::Invalid(format!("{}: a path with a NUL byte", path.display())))
}

/// An open 2-D dataset and its shape.
struct Opened<'a> {
    _file: Id<'a>,
    dset: Id<'a>,
    space: Id<'a>,
    dims: (usize, usize),
}

fn open<'a>(a: &'a Api, path: &Path, dataset: &str) -> Result<Opened<'a>> {
    let cpath = c_path(path)?;
    if !path.is_file() {
        return Err(Error::Invalid(format!("{}: no such file", path.display())));
    }
    // SAFETY: valid NUL-terminated strings; ids checked before use and closed by `Id`.
    unsafe {
        if (a.fis_hdf5)(cpath.as_ptr()) <= 0 {
            return Err(Error::Invalid(format!("{}: not an HDF5 file", path.display())));
        }
        let f = (a.fopen)(cpath.as_ptr(), H5F_ACC_RDONLY, H5P_DEFAULT);
        if f < 0 {
            return Err(Error::Invalid(format!(
                "{}: HDF5 could not open the file",
                path.display()
            )));
        }
        let file = Id {
            id: f,
            close: a.fclose,
            _api: Default::default(),
        };
        let cname =
            CString::new(dataset).map_err(|_| Error::Invalid(format!("dataset name {dataset:?} has a NUL byte")))?;
        if (a.lexists)(f, cname.as_ptr(), H5P_DEFAULT) <= 0 {
            return Err(Error::Invalid(format!(
                "{}: no dataset {dataset:?} (set the dataset name with --dataset)",
                path.display()
            )));
        }
        let d = (a.dopen)(f, cname.as_ptr(), H5P_DEFAULT);
        if d < 0 {
            return Err(Error::Invalid(format!(
                "{}: {dataset:?} is not a dataset",
                path.display()
            )));
        }
        let dset = Id {
            id: d,
            close: a.dclose,
            _api: Default::default(),
        };
        let t = (a.dget_type)(d);
        let class = if t >= 0 {
            let c = (a.tget_class)(t);
            (a.tclose)(t);
            c
        } else {
            -1
        };
        if class != H5T_FLOAT && class != H5T_INTEGER {
            return Err(Error::Invalid(format!(
                "{}: dataset {dataset:?} is not numeric (expected a float or integer matrix)",
                path.display()
            )));
        }
        let s = (a.dget_space)(d);
        if s < 0 {
            return Err(Error::Invalid(format!(
                "{}: dataset {dataset:?} has no dataspace",
                path.display()
            )));
        }
        let space = Id {
            id: s,
            close: a.sclose,
            _api: Default::default(),
        };
        let nd = (a.sget_ndims)(s);
        if nd != 2 {
            return Err(Error::Invalid(format!(
                "{}: dataset {dataset:?} has {nd} dimension(s); expected 2 (TRs × voxels)",
                path.display()
            )));
        }
        let mut dims = [0 as Hsize; 2];
        if (a.sget_dims)(s, dims.as_mut_ptr(), std::ptr::null_mut()) < 0 {
            return Err(Error::Invalid(format!(
                "{}: dataset {dataset:?}: shape unreadable",
                path.display()
            )));
        }
        Ok(Opened {
            _file: file,
            dset,
            space,
            dims: (dims[0] as usize, dims[1] as usize),
        })
    }
}

/// Shape (rows, columns) of the 2-D numeric dataset `dataset` in the HDF5 file `path`.
pub fn shape(path: &Path, dataset: &str) -> Result<(usize, usize)> {
    let a = api()?;
    let dims = open(&a, path, dataset)?.dims;
    Ok(dims)
}

/// Columns `cols` of every row of the 2-D numeric dataset `dataset`, as `f64`
/// (the whole matrix when `cols` is `None`).
pub fn read_columns(path: &Path, dataset: &str, cols: Option<Range<usize>>) -> Result<Array2<f64>> {
    let a = api()?;
    let o = open(&a, path, dataset)?;
    let (n, m) = o.dims;
    let cols = cols.unwrap_or(0..m);
    if cols.start > cols.end || cols.end > m {
        return Err(Error::Invalid(format!(
            "{}: dataset {dataset:?} has {m} columns; asked for {}..{}",
            path.display(),
            cols.start,
            cols.end
        )));
    }
    let w = cols.len();
    let mut out = vec![0.0f64; n * w];
    if n == 0 || w == 0 {
        return Ok(Array2::from_shape_vec((n, w), out).expect("empty"));
    }
    let start = [0 as Hsize, cols.start as Hsize];
    let count = [n as Hsize, w as Hsize];
    // SAFETY: the hyperslab lies inside the dataspace (checked above); the memory space has
    // exactly n × w doubles, the size of `out`.
    unsafe {
        if (a.sselect_hyperslab)(
            o.space.id,
            H5S_SELECT_SET,
            start.as_ptr(),
            std::ptr::null(),
            count.as_ptr(),
            std::ptr::null(),
        ) < 0
        {
            return Err(Error::Invalid(format!(
                "{}: dataset {dataset:?}: column selection failed",
                path.display()
            )));
        }
        let ms = (a.screate_simple)(2, count.as_ptr(), std::ptr::null());
        if ms < 0 {
            return Err(Error::Invalid(format!(
                "{}: dataset {dataset:?}: no memory space",
                path.display()
            )));
        }
        let mem = Id {
            id: ms,
            close: a.sclose,
            _api: Default::default(),
        };
        if (a.dread)(
            o.dset.id,
            a.native_double,
            mem.id,
            o.space.id,
            H5P_DEFAULT,
            out.as_mut_ptr().cast(),
        ) < 0
        {
            return Err(Error::Invalid(format!(
                "{}: dataset {dataset:?}: HDF5 could not read it as f64",
                path.display()
            )));
        }
    }
    Ok(Array2::from_shape_vec((n, w), out).expect("n × w values"))
}

/// Writes `x` as the 2-D little-endian float64 dataset `dataset` of a new HDF5 file at `path`
/// (through a temporary sibling renamed into place, so a failed write leaves nothing).
pub fn write_matrix(path: &Path, dataset: &str, x: ndarray::ArrayView2<f64>) -> Result<()> {
    let a = api()?;
    let tmp = crate::paths::temp_sibling(path);
    let ctmp = c_path(&tmp)?;
    let cname =
        CString::new(dataset).map_err(|_| Error::Invalid(format!("dataset name {dataset:?} has a NUL byte")))?;
    let data: Vec<f64> = x.iter().copied().collect(); // row-major, as HDF5 stores it
    let dims = [x.nrows() as Hsize, x.ncols() as Hsize];
    let fail = |what: &str| Error::Invalid(format!("{}: HDF5 could not {what}", path.display()));
    // SAFETY: ids are checked before use and closed (file last) by `Id`; `data` holds exactly
    // the dataspace's rows × columns doubles.
    let written = unsafe {
        let f = (a.fcreate)(ctmp.as_ptr(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        if f < 0 {
            return Err(fail("create the file"));
        }
        let _file = Id {
            id: f,
            close: a.fclose,
            _api: Default::default(),
        };
        let sp = (a.screate_simple)(2, dims.as_ptr(), std::ptr::null());
        if sp < 0 {
            Err(fail("make a dataspace"))
        } else {
            let _space = Id {
                id: sp,
                close: a.sclose,
                _api: Default::default(),
            };
            let d = (a.dcreate)(
                f,
                cname.as_ptr(),
                a.ieee_f64le,
                sp,
                H5P_DEFAULT,
                H5P_DEFAULT,
                H5P_DEFAULT,
            );
            if d < 0 {
                Err(fail("create the dataset"))
            } else {
                let dset = Id {
                    id: d,
                    close: a.dclose,
                    _api: Default::default(),
                };
                if (a.dwrite)(
                    dset.id,
                    a.native_double,
                    H5S_ALL,
                    H5S_ALL,
                    H5P_DEFAULT,
                    data.as_ptr().cast(),
                ) < 0
                {
                    Err(fail("write the dataset"))
                } else {
                    Ok(())
                }
            }
        }
    };
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
