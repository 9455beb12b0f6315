//! Offer catalogs in dstack's gpuhunt "v2" CSV format, read as published.
//!
//! A catalog is one CSV file per provider (`aws.csv`, `gcp.csv`, `lambdalabs.csv`, …), as
//! gpuhunt writes them (`gpuhunt/_internal/storage.py`, gpuhunt 0.1.34). Its header names
//! the columns `instance_name, location, price, cpu, memory, gpu_count, gpu_name,
//! gpu_memory, spot, disk_size, gpu_vendor, flags, cpu_arch, provider_data`.
//!
//! Read the way gpuhunt's `item_from_row` reads them:
//! - columns are found by name (any order; unknown columns are ignored); `instance_name`,
//!   `location`, `price`, `cpu`, `memory`, `gpu_count` and `spot` are required, the others
//!   may be missing altogether (older catalogs have no `gpu_vendor`, `flags`, `cpu_arch`
//!   or `provider_data`), and an empty value of an optional column means "not given";
//! - `spot` is `True` or `False` (any case); sizes are GB; `disk_size` empty means the
//!   disk size is chosen at launch;
//! - `gpu_vendor` is `nvidia`, `amd`, `google` (TPUs), `intel` or `tenstorrent` (any
//!   case); when empty, a `gpu_name` starting with `tpu-` is a TPU (the prefix is
//!   dropped) and any other machine with GPUs is NVIDIA;
//! - `cpu_arch` is `x86` or `arm` (any case), `x86` when empty;
//! - `flags` (space-separated) are read but not kept: [`Offer`] has no place for them;
//! - `provider_data` is JSON (quoted in the CSV), checked for syntax and not kept.
//!
//! Where kpool is stricter than gpuhunt: gpuhunt logs and skips a malformed row; kpool
//! rejects the file with a [`CatalogError`] naming the file, the line and the column, so
//! that a broken catalog is reported instead of silently shrinking. Numbers must be finite
//! and not negative (gpuhunt takes `nan`, `inf` and negative prices), a row must have as
//! many fields as the header, and `tpu` is also accepted as a GPU vendor.
//!
//! Matching and ranking are the core's ([`crate::core::offers::rank_offers`]): a
//! [`Catalog`] only holds the offers.

use std::path::{Path, PathBuf};

use crate::api::offer::Offer;
use crate::api::resources::{CpuArch, GpuVendor, Requirements};
use crate::core::offers::rank_offers;
use crate::core::policy::EffectivePolicy;

/// The columns of a gpuhunt v2 catalog file, in the order gpuhunt writes them.
pub const COLUMNS: [&str; 14] = [
    "instance_name",
    "location",
    "price",
    "cpu",
    "memory",
    "gpu_count",
    "gpu_name",
    "gpu_memory",
    "spot",
    "disk_size",
    "gpu_vendor",
    "flags",
    "cpu_arch",
    "provider_data",
];

/// Columns every row must fill.
const REQUIRED: [&str; 7] = ["instance_name", "location", "price", "cpu", "memory", "gpu_count", "spot"];

/// Longest value quoted in an error message.
const MAX_VALUE_IN_ERROR: usize = 80;

/// A catalog that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("failed to read catalog {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no catalog files (*.csv) in {location}")]
    NoFiles { location: String },
    #[error("{file}, line {line}: missing required column {column:?}")]
    MissingColumn { file: String, line: u64, column: &'static str },
    #[error("{file}, line {line}: column {column:?} appears more than once")]
    DuplicateColumn { file: String, line: u64, column: String },
    #[error("{file}, line {line}: {reason}")]
    MalformedRow { file: String, line: u64, reason: String },
    #[error("{file}, line {line}, column {column:?}: {reason}: {value:?}")]
    InvalidField { file: String, line: u64, column: &'static str, value: String, reason: String },
}

impl CatalogError {
    /// A bounded string for Event reasons, status and metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            CatalogError::Io { .. } => "CatalogUnreadable",
            CatalogError::NoFiles { .. } => "CatalogEmpty",
            CatalogError::MissingColumn { .. } | CatalogError::DuplicateColumn { .. } => "CatalogBadHeader",
            CatalogError::MalformedRow { .. } | CatalogError::InvalidField { .. } => "CatalogBadRow",
        }
    }
}

/// The offers of one backend, read from gpuhunt catalog files.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    offers: Vec<Offer>,
}

impl From<Vec<Offer>> for Catalog {
    fn from(offers: Vec<Offer>) -> Self {
        Catalog { offers }
    }
}

impl Catalog {
    /// The offers of one catalog file: `provider` is the file's stem (`aws` for `aws.csv`),
    /// `backend` the name of the `Backend` object the offers belong to.
    pub fn parse(provider: &str, backend: &str, csv: &str) -> Result<Vec<Offer>, CatalogError> {
        parse_file(&format!("{provider}.csv"), backend, csv)
    }

    /// Every `*.csv` file of the directory `path`, in file name order.
    pub fn from_dir(path: impl AsRef<Path>, backend: &str) -> Result<Self, CatalogError> {
        let dir = path.as_ref();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CatalogError::Io { path, source }
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if csv_stem(&path.file_name().unwrap_or_default().to_string_lossy()).is_some() && path.is_file() {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(CatalogError::NoFiles { location: dir.display().to_string() });
        }
        files.sort();
        let mut offers = Vec::new();
        for path in files {
            let file = std::fs::File::open(&path).map_err(io(&path))?;
            read_offers(&path.display().to_string(), backend, file, |o| offers.push(o.clone()))?;
        }
        Ok(Catalog { offers })
    }

    /// The `*.csv` entries of `(file name, text)` pairs, e.g. a `ConfigMap`'s data; other
    /// entries are ignored. Files are read in the order given.
    pub fn from_files<I, N, T>(files: I, backend: &str) -> Result<Self, CatalogError>
    where
        I: IntoIterator<Item = (N, T)>,
        N: AsRef<str>,
        T: AsRef<str>,
    {
        let mut offers = Vec::new();
        let mut found = false;
        for (name, text) in files {
            let name = name.as_ref();
            if csv_stem(name).is_some() {
                offers.extend(parse_file(name, backend, text.as_ref())?);
                found = true;
            }
        }
        if !found {
            return Err(CatalogError::NoFiles { location: "the catalog data".into() });
        }
        Ok(Catalog { offers })
    }

    /// Every offer, in file order.
    pub fn offers(&self) -> &[Offer] {
        &self.offers
    }

    /// The offers that fit `req` and `policy`, cheapest first, at most `limit` of them
    /// ([`rank_offers`]).
    pub fn query(&self, req: &Requirements, policy: &EffectivePolicy, limit: usize) -> Vec<Offer> {
        rank_offers(&self.offers, req, policy, limit)
    }
}

/// `aws` for `aws.csv` (the extension in any case); `None` for other names.
fn csv_stem(name: &str) -> Option<&str> {
    let split = name.len().checked_sub(4)?;
    let (stem, ext) = (name.get(..split)?, name.get(split..)?);
    (ext.eq_ignore_ascii_case(".csv") && !stem.is_empty()).then_some(stem)
}

/// Positions of the known columns in a file's header.
struct Columns {
    idx: [Option<usize>; COLUMNS.len()],
    width: usize,
}

impl Columns {
    fn resolve(file: &str, line: u64, header: &csv::StringRecord) -> Result<Self, CatalogError> {
        let mut idx = [None; COLUMNS.len()];
        for (pos, name) in header.iter().enumerate() {
            let name = name.trim_start_matches('\u{feff}').trim();
            if let Some(k) = COLUMNS.iter().position(|c| *c == name) {
                if idx[k].is_some() {
                    return Err(CatalogError::DuplicateColumn { file: file.into(), line, column: name.into() });
                }
                idx[k] = Some(pos);
            }
        }
        for column in REQUIRED {
            if idx[column_index(column)].is_none() {
                return Err(CatalogError::MissingColumn { file: file.into(), line, column });
            }
        }
        Ok(Columns { idx, width: header.len() })
    }
}

const fn column_index(name: &str) -> usize {
    let mut k = 0;
    while k < COLUMNS.len() {
        if const_eq(COLUMNS[k], name) {
            return k;
        }
        k += 1;
    }
    panic!("unknown column");
}

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

// Positions of the columns in `COLUMNS`.
const INSTANCE_NAME: usize = column_index("instance_name");
const LOCATION: usize = column_index("location");
const PRICE: usize = column_index("price");
const CPU: usize = column_index("cpu");
const MEMORY: usize = column_index("memory");
const GPU_COUNT: usize = column_index("gpu_count");
const GPU_NAME: usize = column_index("gpu_name");
const GPU_MEMORY: usize = column_index("gpu_memory");
const SPOT: usize = column_index("spot");
const DISK_SIZE: usize = column_index("disk_size");
const GPU_VENDOR: usize = column_index("gpu_vendor");
const CPU_ARCH: usize = column_index("cpu_arch");
const PROVIDER_DATA: usize = column_index("provider_data");

/// One row being read: looks fields up by column (an index into [`COLUMNS`]) and builds
/// errors that name them.
struct Row<'a> {
    file: &'a str,
    line: u64,
    record: &'a csv::StringRecord,
    columns: &'a Columns,
}

impl<'a> Row<'a> {
    /// The trimmed value of `column`; empty when the file has no such column.
    fn get(&self, column: usize) -> &'a str {
        trim(self.columns.idx[column].and_then(|i| self.record.get(i)).unwrap_or(""))
    }

    fn invalid(&self, column: usize, reason: impl Into<String>) -> CatalogError {
        let mut value = self.get(column).to_string();
        if value.len() > MAX_VALUE_IN_ERROR {
            let cut = (0..=MAX_VALUE_IN_ERROR).rev().find(|&i| value.is_char_boundary(i)).unwrap_or(0);
            value.truncate(cut);
            value.push('…');
        }
        let column = COLUMNS[column];
        CatalogError::InvalidField { file: self.file.into(), line: self.line, column, value, reason: reason.into() }
    }

    fn required(&self, column: usize) -> Result<&'a str, CatalogError> {
        let value = self.get(column);
        if value.is_empty() {
            return Err(self.invalid(column, "required value is empty"));
        }
        Ok(value)
    }

    fn count(&self, column: usize) -> Result<u32, CatalogError> {
        self.required(column)?.parse().map_err(|_| self.invalid(column, "not a whole number"))
    }

    fn number(&self, column: usize) -> Result<f64, CatalogError> {
        let value = self.required(column)?;
        match value.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            Ok(_) => Err(self.invalid(column, "not a finite, non-negative number")),
            Err(_) => Err(self.invalid(column, "not a number")),
        }
    }

    fn optional_number(&self, column: usize) -> Result<Option<f64>, CatalogError> {
        if self.get(column).is_empty() {
            return Ok(None);
        }
        self.number(column).map(Some)
    }

    /// Reads the row into `offer`, reusing its strings; `offer.backend` is left as it is.
    /// Columns are checked in a fixed order, so a row with several bad values always names
    /// the same one.
    fn read_into(&self, offer: &mut Offer) -> Result<(), CatalogError> {
        let gpu_count = self.count(GPU_COUNT)?;
        let spot = match self.required(SPOT)? {
            v if v.eq_ignore_ascii_case("true") => true,
            v if v.eq_ignore_ascii_case("false") => false,
            _ => return Err(self.invalid(SPOT, "expected True or False")),
        };
        let mut gpu_name = Some(self.get(GPU_NAME)).filter(|n| !n.is_empty());
        let mut gpu_vendor = match self.get(GPU_VENDOR) {
            "" => None,
            v => Some(parse_vendor(v).ok_or_else(|| {
                self.invalid(GPU_VENDOR, "unknown GPU vendor (nvidia, amd, google, intel, tenstorrent)")
            })?),
        };
        // Catalogs older than the `gpu_vendor` column mark TPUs with a `tpu-` name prefix
        // and imply NVIDIA otherwise; gpuhunt drops the prefix in every case.
        if let Some(tpu) = gpu_name.and_then(|n| n.strip_prefix("tpu-")) {
            gpu_name = Some(tpu);
            gpu_vendor = gpu_vendor.or(Some(GpuVendor::Tpu));
        } else if gpu_vendor.is_none() && gpu_count > 0 {
            gpu_vendor = Some(GpuVendor::Nvidia);
        }
        let cpu_arch = match self.get(CPU_ARCH) {
            "" => CpuArch::X86,
            v if v.eq_ignore_ascii_case("x86") => CpuArch::X86,
            v if v.eq_ignore_ascii_case("arm") => CpuArch::Arm,
            _ => return Err(self.invalid(CPU_ARCH, "unknown CPU architecture (x86, arm)")),
        };
        let provider_data = self.get(PROVIDER_DATA);
        // `{}`, the most common value, needs no parser.
        if !matches!(provider_data, "" | "{}") && serde_json::from_str::<serde::de::IgnoredAny>(provider_data).is_err()
        {
            return Err(self.invalid(PROVIDER_DATA, "not valid JSON"));
        }
        let region = self.required(LOCATION)?;
        let instance_type = self.required(INSTANCE_NAME)?;
        let cpu = self.count(CPU)?;
        let memory = self.number(MEMORY)?;
        let disk = self.optional_number(DISK_SIZE)?;
        let gpu_memory = self.optional_number(GPU_MEMORY)?.unwrap_or(0.0);
        let price = self.number(PRICE)?;
        set(&mut offer.region, region);
        set(&mut offer.instance_type, instance_type);
        match (gpu_name, &mut offer.gpu_name) {
            (Some(name), Some(kept)) => set(kept, name),
            (name, kept) => *kept = name.map(str::to_string),
        }
        offer.cpu = cpu;
        offer.cpu_arch = Some(cpu_arch);
        offer.memory = memory;
        offer.disk = disk;
        offer.gpu_count = gpu_count;
        offer.gpu_memory = gpu_memory;
        offer.gpu_vendor = gpu_vendor;
        // The core looks the compute capability of well-known GPU names up itself.
        offer.compute_capability = None;
        offer.spot = spot;
        offer.price = price;
        Ok(())
    }
}

/// `s.trim()`, without its Unicode scan for the usual field that starts and ends with a
/// printable ASCII character (no whitespace is ASCII above the space).
fn trim(s: &str) -> &str {
    let printable = |b: Option<&u8>| b.is_some_and(|&b| b > b' ' && b.is_ascii());
    if printable(s.as_bytes().first()) && printable(s.as_bytes().last()) {
        s
    } else {
        s.trim()
    }
}

/// Replaces `s` with `value`, keeping its allocation.
fn set(s: &mut String, value: &str) {
    s.clear();
    s.push_str(value);
}

/// gpuhunt's `AcceleratorVendor` values, any case; `tpu` is kpool's name for `google`.
fn parse_vendor(v: &str) -> Option<GpuVendor> {
    [
        ("nvidia", GpuVendor::Nvidia),
        ("amd", GpuVendor::Amd),
        ("google", GpuVendor::Tpu),
        ("tpu", GpuVendor::Tpu),
        ("intel", GpuVendor::Intel),
        ("tenstorrent", GpuVendor::Tenstorrent),
    ]
    .into_iter()
    .find(|(name, _)| v.eq_ignore_ascii_case(name))
    .map(|(_, vendor)| vendor)
}

/// Parses one catalog file; `file` names it in errors.
fn parse_file(file: &str, backend: &str, text: &str) -> Result<Vec<Offer>, CatalogError> {
    let mut offers = Vec::new();
    read_offers(file, backend, text.as_bytes(), |o| offers.push(o.clone()))?;
    Ok(offers)
}

/// Reads one catalog file from `input` and hands its offers to `each`, in file order;
/// `file` names it in errors. The offer handed over is one buffer reused for every row,
/// so that reading allocates nothing per row: clone the offers you keep (e.g. with
/// [`crate::core::offers::TopOffers`], which clones only those among the best).
pub fn read_offers(
    file: &str,
    backend: &str,
    input: impl std::io::Read,
    mut each: impl FnMut(&Offer),
) -> Result<(), CatalogError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).buffer_capacity(1 << 16).from_reader(input);
    let malformed = |e: csv::Error| {
        if let csv::ErrorKind::Io(_) = e.kind() {
            // The I/O error itself, not csv's wrapper around it.
            return CatalogError::Io { path: file.into(), source: e.into() };
        }
        let line = e.position().map_or(0, |p| p.line());
        let reason = match e.kind() {
            csv::ErrorKind::Utf8 { err, .. } => format!("field {} is not valid UTF-8", err.field() + 1),
            _ => e.to_string(),
        };
        CatalogError::MalformedRow { file: file.into(), line, reason }
    };
    let header = reader.headers().map_err(malformed)?.clone();
    let header_line = header.position().map_or(1, |p| p.line());
    let columns = Columns::resolve(file, header_line, &header)?;
    let mut offer = Offer { backend: backend.to_string(), ..Offer::default() };
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(malformed)? {
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != columns.width {
            return Err(CatalogError::MalformedRow {
                file: file.into(),
                line,
                reason: format!(
                    "{} fields where the header has {} (is a field with a comma not quoted?)",
                    record.len(),
                    columns.width
                ),
            });
        }
        Row { file, line, record: &record, columns: &columns }.read_into(&mut offer)?;
        each(&offer);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,disk_size,\
                          gpu_vendor,flags,cpu_arch,provider_data\n";

    fn one(row: &str) -> Result<Offer, CatalogError> {
        Catalog::parse("test", "be", &format!("{HEADER}{row}\n")).map(|mut v| v.remove(0))
    }

    #[test]
    fn reads_a_full_row() {
        let o =
            one(r#"p5.48xlarge,us-east-1,55.04,192,2048.0,8,H100,80.0,False,,nvidia,,x86,"{""a"": [1, 2]}""#).unwrap();
        assert_eq!(o.backend, "be");
        assert_eq!((o.instance_type.as_str(), o.region.as_str()), ("p5.48xlarge", "us-east-1"));
        assert_eq!((o.cpu, o.memory, o.gpu_count, o.gpu_memory, o.price), (192, 2048.0, 8, 80.0, 55.04));
        assert_eq!(
            (o.gpu_name.as_deref(), o.gpu_vendor, o.cpu_arch),
            (Some("H100"), Some(GpuVendor::Nvidia), Some(CpuArch::X86))
        );
        assert_eq!((o.disk, o.spot, o.compute_capability), (None, false, None));
    }

    #[test]
    fn legacy_vendor_defaults() {
        let tpu = one("v5litepod-1,us-west4-a,1.2,24,48,1,tpu-v5litepod-1,16,False,,,,,").unwrap();
        assert_eq!((tpu.gpu_name.as_deref(), tpu.gpu_vendor), (Some("v5litepod-1"), Some(GpuVendor::Tpu)));
        let gpu = one("g4dn.xlarge,us-east-1,0.5,4,16,1,T4,16,TRUE,,,,,").unwrap();
        assert_eq!((gpu.gpu_vendor, gpu.cpu_arch, gpu.spot), (Some(GpuVendor::Nvidia), Some(CpuArch::X86), true));
        let cpu = one("m7g.large,us-east-1,0.08,2,8,0,,,false,,,,ARM,").unwrap();
        assert_eq!((cpu.gpu_vendor, cpu.gpu_memory, cpu.cpu_arch), (None, 0.0, Some(CpuArch::Arm)));
        let amd = one("x,r,1,8,64,1,MI300X,192,False,,AMD,,x86,{}").unwrap();
        assert_eq!(amd.gpu_vendor, Some(GpuVendor::Amd));
    }

    #[test]
    fn rejects_bad_values() {
        let cases = [
            ("x,r,nan,2,8,0,,,False,,,,x86,{}", "price"),
            ("x,r,-1,2,8,0,,,False,,,,x86,{}", "price"),
            ("x,r,1,2.5,8,0,,,False,,,,x86,{}", "cpu"),
            ("x,r,1,2,8,0,,,yes,,,,x86,{}", "spot"),
            ("x,r,1,2,8,0,,,False,abc,,,x86,{}", "disk_size"),
            ("x,r,1,2,8,1,T4,16,False,,nvidai,,x86,{}", "gpu_vendor"),
            ("x,r,1,2,8,0,,,False,,,,riscv,{}", "cpu_arch"),
            ("x,r,1,2,8,0,,,False,,,,x86,{oops", "provider_data"),
            (",r,1,2,8,0,,,False,,,,x86,{}", "instance_name"),
        ];
        for (row, column) in cases {
            match one(row) {
                Err(CatalogError::InvalidField { column: c, line: 2, .. }) => assert_eq!(c, column, "{row}"),
                other => panic!("{row}: {other:?}"),
            }
        }
    }

    #[test]
    fn file_names() {
        assert_eq!(csv_stem("aws.csv"), Some("aws"));
        assert_eq!(csv_stem("GCP.CSV"), Some("GCP"));
        assert_eq!((csv_stem(".csv"), csv_stem("README.md"), csv_stem("csv")), (None, None, None));
        let err = Catalog::from_files([("README.md", "hello")], "be").unwrap_err();
        assert_eq!(err.category(), "CatalogEmpty");
    }

    #[test]
    fn trim_is_str_trim() {
        for s in ["", " ", "a", " a", "a ", "\u{a0}a", "a\u{85}", "\u{b}a\u{c}", "\u{1f}", "é", " é\t", "a b"] {
            assert_eq!(trim(s), s.trim(), "{s:?}");
        }
    }

    #[test]
    fn long_values_are_cut_in_errors() {
        let long = "9".repeat(500);
        let err = one(&format!("x,r,1,2,8,0,,,False,,,,{long}x,{{}}")).unwrap_err();
        assert!(err.to_string().len() < 250, "{err}");
    }
}
