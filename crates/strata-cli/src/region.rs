//! `strata region`: build, inspect, verify, import and export region files.
//!
//! Exit codes: 0 when the command succeeded and (for `verify`) every region
//! is clean; 1 when `verify` found a corrupt layer; 2 for usage errors and
//! files that cannot be read or written (the message names the file and
//! what is wrong).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};
use strata_pool::budget::format_bytes;
use strata_region::format::Dtype;
use strata_region::{export_plain, Region, RegionBuilder, RegionError};

/// Exit code: success, and for `verify` every layer intact.
const EXIT_CLEAN: u8 = 0;
/// Exit code: `verify` found a corrupt layer.
const EXIT_DAMAGED: u8 = 1;
/// Exit code: bad arguments or unreadable files.
const EXIT_ERROR: u8 = 2;

/// The `strata region` subcommands.
#[derive(Debug, Subcommand)]
pub enum RegionCommand {
    /// Build a region from a directory of files (each a byte-blob layer
    /// named by its path in the directory) or from a JSON manifest
    /// (`[{"name", "file", "dtype", "shape", "attributes"}]`).
    Build {
        /// A directory, or a `.json` manifest.
        input: PathBuf,
        /// The region file to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Show a region's layers, dtypes, shapes, sizes, attributes and
    /// whether each carries a checksum (nothing is verified).
    Inspect {
        /// A region or safetensors file.
        file: PathBuf,
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Verify every layer's checksum of a file, or of every region file of
    /// a directory.
    Verify {
        /// A file or a directory.
        path: PathBuf,
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Write a safetensors file as a region: the same layers and metadata,
    /// with a checksum per layer and the data on a 4 KiB boundary.
    Import {
        /// A safetensors file.
        file: PathBuf,
        /// The region file to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Write a region as a plain safetensors file (no Strata metadata, no
    /// padding tensors); every layer is verified before it is copied.
    Export {
        /// A region file.
        file: PathBuf,
        /// The safetensors file to write.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// Runs one `strata region` command, printing its result.
pub fn run(command: RegionCommand) -> ExitCode {
    let result = match command {
        RegionCommand::Build { input, output } => build(&input, &output).map(|()| EXIT_CLEAN),
        RegionCommand::Inspect { file, json } => inspect(&file, json).map(|()| EXIT_CLEAN),
        RegionCommand::Verify { path, json } => verify(&path, json),
        RegionCommand::Import { file, output } => import(&file, &output).map(|()| EXIT_CLEAN),
        RegionCommand::Export { file, output } => Region::open(&file)
            .and_then(|region| export_plain(&region, &output))
            .map(|()| {
                println!("wrote {}", output.display());
                EXIT_CLEAN
            })
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("strata region: error: {message}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn files_under(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files_under(&path, base, out)?;
        } else if path.is_file() {
            let name = path
                .strip_prefix(base)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.push((name, path));
        }
    }
    Ok(())
}

fn build(input: &Path, output: &Path) -> Result<(), String> {
    let mut builder = RegionBuilder::create(output).map_err(|e| e.to_string())?;
    if input.is_dir() {
        let mut files = Vec::new();
        files_under(input, input, &mut files)?;
        for (name, path) in &files {
            let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let len = file
                .metadata()
                .map_err(|e| format!("{}: {e}", path.display()))?
                .len();
            builder
                .add_from_reader(name, Dtype::U8, &[len], file, &[("source", name)])
                .map_err(|e| e.to_string())?;
        }
    } else {
        let text =
            std::fs::read_to_string(input).map_err(|e| format!("{}: {e}", input.display()))?;
        let manifest: Vec<Value> = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a JSON list of layers: {e}", input.display()))?;
        let base = input.parent().unwrap_or(Path::new("."));
        for (n, entry) in manifest.iter().enumerate() {
            let field = |key: &str| {
                entry
                    .get(key)
                    .ok_or_else(|| format!("{}: layer {n}: no {key:?}", input.display()))
            };
            let name = field("name")?
                .as_str()
                .ok_or(format!("layer {n}: name is not a string"))?;
            let file = base.join(
                field("file")?
                    .as_str()
                    .ok_or(format!("layer {n}: file is not a string"))?,
            );
            let dtype_name = entry.get("dtype").and_then(Value::as_str).unwrap_or("U8");
            let dtype = Dtype::from_name(dtype_name)
                .ok_or_else(|| format!("layer {name:?}: unknown dtype {dtype_name:?}"))?;
            let reader =
                std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let len = reader.metadata().map_err(|e| e.to_string())?.len();
            let shape: Vec<u64> = match entry.get("shape") {
                Some(shape) => serde_json::from_value(shape.clone())
                    .map_err(|e| format!("layer {name:?}: shape: {e}"))?,
                None => vec![len / dtype.size_bytes()],
            };
            let attributes: Vec<(String, String)> = match entry.get("attributes") {
                Some(a) => {
                    serde_json::from_value::<std::collections::BTreeMap<String, String>>(a.clone())
                        .map_err(|e| format!("layer {name:?}: attributes: {e}"))?
                        .into_iter()
                        .collect()
                }
                None => Vec::new(),
            };
            let attributes: Vec<(&str, &str)> = attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            builder
                .add_from_reader(name, dtype, &shape, reader, &attributes)
                .map_err(|e| e.to_string())?;
        }
    }
    let layers = builder.layer_count();
    let path = builder.finish().map_err(|e| e.to_string())?;
    println!("wrote {} ({layers} layers)", path.display());
    Ok(())
}

fn inspect(file: &Path, json_output: bool) -> Result<(), String> {
    let region = Region::open(file).map_err(|e| e.to_string())?;
    let header = region.header();
    if json_output {
        let layers: Vec<Value> = region
            .layers()
            .iter()
            .map(|l| {
                json!({
                    "name": l.name, "dtype": l.dtype.name(), "shape": l.shape, "bytes": l.len_bytes(),
                    "offset": header.data_start + l.begin,
                    "checksum": l.checksum.map(|c| format!("{c:016x}")),
                    "attributes": l.attributes.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                })
            })
            .collect();
        let value = json!({
            "path": file.display().to_string(),
            "format_version": header.format_version,
            "header_bytes": header.header_bytes,
            "data_start": header.data_start,
            "data_bytes": header.data_bytes,
            "metadata": header.other_metadata.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "layers": layers,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!("{}", file.display());
    println!(
        "  format        {}",
        header
            .format_version
            .map_or("plain safetensors (no checksums)".to_string(), |v| format!(
                "strata region v{v}"
            ))
    );
    println!(
        "  size          {} header, {} data, data at byte {}",
        format_bytes(header.header_bytes),
        format_bytes(header.data_bytes),
        header.data_start
    );
    for (key, value) in &header.other_metadata {
        println!("  metadata      {key} = {value}");
    }
    println!("  layers        {}", region.layer_count());
    for layer in region.layers() {
        let shape = layer
            .shape
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("x");
        let attributes = layer
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "    {:<24} {:<7} {:<14} {:>10}  {}  {}",
            layer.name,
            layer.dtype.name(),
            if shape.is_empty() {
                "scalar".to_string()
            } else {
                shape
            },
            format_bytes(layer.len_bytes()),
            if layer.checksum.is_some() {
                "xxh3"
            } else {
                "unverified"
            },
            attributes
        );
    }
    Ok(())
}

fn verify(path: &Path, json_output: bool) -> Result<u8, String> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                !name.starts_with('.')
                    && p.extension().is_some_and(|e| {
                        strata_region::store::REGION_EXTENSIONS
                            .contains(&e.to_string_lossy().as_ref())
                    })
            })
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut code = EXIT_CLEAN;
    let mut reports = Vec::new();
    for file in &files {
        let (status, errors, layers, unverified): (&str, Vec<String>, usize, usize) =
            match Region::open(file) {
                Err(error) => {
                    code = code.max(EXIT_ERROR);
                    ("unreadable", vec![error.to_string()], 0, 0)
                }
                Ok(region) => {
                    let unverified = region
                        .layers()
                        .iter()
                        .filter(|l| l.checksum.is_none())
                        .count();
                    match region.verify() {
                        Ok(()) => ("clean", Vec::new(), region.layer_count(), unverified),
                        Err(errors) => {
                            code = code.max(EXIT_DAMAGED);
                            let errors =
                                errors.iter().map(|e: &RegionError| e.to_string()).collect();
                            ("damaged", errors, region.layer_count(), unverified)
                        }
                    }
                }
            };
        if !json_output {
            println!(
                "{}: {status}: {layers} layers, {} verified, {unverified} without checksums",
                file.display(),
                layers - unverified - errors.len().min(layers - unverified)
            );
            for error in &errors {
                println!("  {error}");
            }
        }
        reports.push(json!({
            "path": file.display().to_string(), "status": status, "layers": layers,
            "unverified_layers": unverified, "errors": errors,
        }));
    }
    if json_output {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "files": reports })).map_err(|e| e.to_string())?
        );
    }
    Ok(code)
}

fn import(file: &Path, output: &Path) -> Result<(), String> {
    let source = Region::open(file).map_err(|e| e.to_string())?;
    let mut builder = RegionBuilder::create(output).map_err(|e| e.to_string())?;
    for (key, value) in &source.header().other_metadata {
        builder
            .set_metadata(key, value)
            .map_err(|e| e.to_string())?;
    }
    for index in 0..source.layer_count() {
        let layer = source.layer_at(index).map_err(|e| e.to_string())?;
        let attributes: Vec<(&str, &str)> = layer
            .attributes()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        builder
            .add_tensor(
                layer.name(),
                layer.dtype(),
                layer.shape(),
                layer.bytes(),
                &attributes,
            )
            .map_err(|e| e.to_string())?;
    }
    let layers = builder.layer_count();
    let path = builder.finish().map_err(|e| e.to_string())?;
    println!(
        "wrote {} ({layers} layers, each with a checksum)",
        path.display()
    );
    Ok(())
}
