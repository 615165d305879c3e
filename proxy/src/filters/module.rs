//! Filter modules: validated, compiled once, and pre-linked for fast
//! per-request instantiation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::bindings::FilterPre;
use super::host::FilterHost;
use super::runtime::FilterRuntime;
use super::store::{ModuleStore, sha256_hex, write_atomic};
use std::io;

/// Import namespaces a filter may use. WASI is granted sandboxed (no files,
/// no environment, and sockets that are refused when created: see
/// `host::sandboxed_wasi`); everything else, `wasi:http` for one, is
/// refused at load.
const GRANTED_IMPORTS: &[&str] =
    &["cascade:filter/", "wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:filesystem/", "wasi:sockets/"];

/// Why a module cannot be used. Every variant names the module.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("module {name:?} ({}): cannot read: {source}", path.display())]
    Read { name: String, path: PathBuf, source: std::io::Error },
    #[error("cannot read module directory {}: {source}", path.display())]
    ReadDir { path: PathBuf, source: std::io::Error },
    #[error("module {name:?}: not a WebAssembly binary (bad magic number)")]
    NotWasm { name: String },
    #[error(
        "module {name:?}: is a core WebAssembly module, not a component; build it for \
         wasm32-wasip2 or wrap it with `wasm-tools component new`"
    )]
    CoreModule { name: String },
    #[error("module {name:?}: does not compile: {reason}")]
    Compile { name: String, reason: String },
    #[error("module {name:?}: imports {import:?}, which the host does not grant")]
    UngrantedImport { name: String, import: String },
    #[error("module {name:?}: is not a cascade:filter component: {reason}")]
    WrongWorld { name: String, reason: String },
    #[error("module name {name:?} is not valid: use letters, digits, '-' and '_'")]
    BadName { name: String },
    /// Any of the above, for the module in the file at `path`: with a
    /// modules directory and uploaded versions of the same name, the name
    /// alone does not say which file is at fault.
    #[error("{}: {source}", path.display())]
    InFile { path: PathBuf, source: Box<ModuleError> },
}

impl ModuleError {
    /// This error, for the module in the file at `path`.
    pub fn in_file(self, path: &Path) -> Self {
        Self::InFile { path: path.to_path_buf(), source: Box::new(self) }
    }
}

/// A compiled, pre-linked filter component.
pub struct FilterModule {
    pub name: String,
    pub pre: FilterPre<FilterHost>,
    /// Size of the component binary in bytes.
    pub size: usize,
    /// Hex sha256 of the component binary: the version's identity.
    pub sha256: String,
    /// Time to compile, or to load the precompiled artifact.
    pub compile_time: Duration,
    /// Whether this load ran the compiler (false: a cached artifact).
    pub compiled: bool,
}

impl std::fmt::Debug for FilterModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterModule").field("name", &self.name).field("size", &self.size).finish_non_exhaustive()
    }
}

/// Compiled module versions alive in this process, across all snapshots.
static LIVE_MODULES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// How many compiled module versions are alive: the current snapshot's,
/// plus any still pinned by requests in flight.
pub fn live_modules() -> i64 {
    LIVE_MODULES.load(std::sync::atomic::Ordering::Relaxed)
}

impl Drop for FilterModule {
    fn drop(&mut self) {
        LIVE_MODULES.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `true` for names that are safe as file stems and URL segments.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl FilterModule {
    /// Validate `bytes` as a filter component and compile it. Nothing is
    /// compiled for binaries that are not components.
    ///
    /// With a `store`, the precompiled artifact is read from its cache when
    /// present (nothing is compiled) and written there after a compile, once
    /// the component has passed every check here: a binary refused as no
    /// filter (an ungranted import, the wrong world) leaves nothing on disk.
    /// (A filter whose config a route then refuses keeps its artifact: it is
    /// a valid filter, and a corrected config will want it.)
    pub fn compile(
        runtime: &FilterRuntime,
        name: &str,
        bytes: &[u8],
        store: Option<&ModuleStore>,
    ) -> Result<Self, ModuleError> {
        let name_owned = || name.to_string();
        if !valid_name(name) {
            return Err(ModuleError::BadName { name: name_owned() });
        }
        match bytes.get(0..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                return Err(ModuleError::CoreModule { name: name_owned() });
            }
            Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
            _ => return Err(ModuleError::NotWasm { name: name_owned() }),
        }
        // Before anything is compiled: a large component (one in Python
        // carries CPython) takes seconds to compile, and an import the host
        // does not grant refuses it whatever the compile would say.
        if let Some(import) = ungranted_import(bytes) {
            return Err(ModuleError::UngrantedImport { name: name_owned(), import });
        }
        let sha256 = sha256_hex(bytes);
        let started = Instant::now();
        let artifact = store.map(|s| s.artifact_path(&sha256));
        // SAFETY: artifacts are written only by this process, atomically,
        // from components it compiled, under a directory keyed by this
        // engine's compatibility hash.
        let cached = artifact
            .as_ref()
            .filter(|path| path.is_file())
            .and_then(|path| unsafe { Component::deserialize_file(runtime.engine(), path) }.ok());
        let compiled = cached.is_none();
        let component = match cached {
            Some(component) => component,
            None => {
                let component = Component::new(runtime.engine(), bytes)
                    .map_err(|e| ModuleError::Compile { name: name_owned(), reason: format!("{e:#}") })?;
                runtime.count_compilation();
                component
            }
        };
        let compile_time = started.elapsed();

        let ty = component.component_type();
        let wrong_world = |reason: String| ModuleError::WrongWorld { name: name_owned(), reason };
        for export in ["on-request", "on-response", "check-config"] {
            if !matches!(ty.get_export(runtime.engine(), export).map(|e| e.ty), Some(ComponentItem::ComponentFunc(_))) {
                return Err(wrong_world(format!("it does not export the function `{export}`")));
            }
        }
        let instance_pre = runtime.linker().instantiate_pre(&component).map_err(|e| wrong_world(format!("{e:#}")))?;
        let pre = FilterPre::new(instance_pre).map_err(|e| wrong_world(format!("{e:#}")))?;
        if compiled
            && let Some(path) = &artifact
            && let Err(e) = component.serialize().map_err(io::Error::other).and_then(|a| write_atomic(path, &a))
        {
            log::warn!("module {name:?}: cannot cache the compiled artifact at {}: {e}", path.display());
        }
        LIVE_MODULES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Self { name: name_owned(), pre, size: bytes.len(), sha256, compile_time, compiled })
    }
}

/// The first import of the component in `bytes` that the host does not
/// grant. Only the outer component's imports count: a nested module's or
/// component's are satisfied inside it. Type imports (the world's `use` of
/// `request`) grant nothing. A binary that does not parse gives `None`,
/// and the compiler then says what is wrong with it.
fn ungranted_import(bytes: &[u8]) -> Option<String> {
    use wasmparser::{ComponentTypeRef, Parser, Payload};
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(imports) if depth == 0 => {
                for import in imports {
                    let import = import.ok()?;
                    let granted = GRANTED_IMPORTS.iter().any(|granted| import.name.name.starts_with(granted));
                    if !granted && !matches!(import.ty, ComponentTypeRef::Type(_)) {
                        return Some(import.name.name.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// Every loaded module, by name.
#[derive(Debug, Default, Clone)]
pub struct ModuleRegistry {
    modules: BTreeMap<String, Arc<FilterModule>>,
    /// Files of the modules directory left out because they were deleted
    /// through the admin API, so that an error can say so.
    deleted: BTreeSet<String>,
}

impl ModuleRegistry {
    /// The module files of `dir` (every `*.wasm`), by name, in order.
    pub fn dir_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, ModuleError> {
        let read_dir_error = |source| ModuleError::ReadDir { path: dir.to_path_buf(), source };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_dir_error)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
            .collect();
        paths.sort();
        let name = |path: &PathBuf| path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        Ok(paths.into_iter().map(|path| (name(&path), path)).collect())
    }

    /// Load every `*.wasm` in `dir` but those named in `deleted`; the module
    /// name is the file stem. Any invalid file fails the whole load, naming
    /// the file.
    pub fn load_dir(
        runtime: &FilterRuntime,
        dir: &Path,
        store: Option<&ModuleStore>,
        deleted: &BTreeSet<String>,
    ) -> Result<Self, ModuleError> {
        let mut registry = Self::default();
        for (name, path) in Self::dir_files(dir)? {
            if deleted.contains(&name) {
                log::info!("module {name:?}: {} stays deleted until a module of that name is uploaded", path.display());
                registry.deleted.insert(name);
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| ModuleError::Read {
                name: name.clone(),
                path: path.clone(),
                source,
            })?;
            let module = FilterModule::compile(runtime, &name, &bytes, store).map_err(|e| e.in_file(&path))?;
            log::info!(
                "loaded module {name:?} from {} ({} bytes, {} in {:?})",
                path.display(),
                module.size,
                if module.compiled { "compiled" } else { "precompiled artifact" },
                module.compile_time
            );
            registry.insert(module);
        }
        Ok(registry)
    }

    pub fn insert(&mut self, module: FilterModule) {
        self.insert_shared(Arc::new(module));
    }

    /// Insert a module another registry holds too.
    pub fn insert_shared(&mut self, module: Arc<FilterModule>) {
        self.deleted.remove(&module.name);
        self.modules.insert(module.name.clone(), module);
    }

    /// Whether the modules directory's file of `name` was left out because
    /// it was deleted through the admin API.
    pub fn was_deleted(&self, name: &str) -> bool {
        self.deleted.contains(name)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<FilterModule>> {
        self.modules.get(name)
    }

    pub fn modules(&self) -> impl Iterator<Item = &Arc<FilterModule>> {
        self.modules.values()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}

impl ModuleRegistry {
    /// Remove a module, if it is there.
    pub fn remove(&mut self, name: &str) {
        self.modules.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component that instantiates a core module with one table (the
    /// most a module may have) `instances` times, and does nothing else.
    fn component_with_tables(instances: u32) -> Vec<u8> {
        use wasm_encoder::{
            Component, InstanceSection, Module, ModuleArg, ModuleSection, RefType, TableSection, TableType,
        };
        let mut table = TableSection::new();
        table.table(TableType {
            element_type: RefType::FUNCREF,
            table64: false,
            minimum: 1,
            maximum: None,
            shared: false,
        });
        let mut module = Module::new();
        module.section(&table);
        let mut component = Component::new();
        component.section(&ModuleSection(&module));
        let mut section = InstanceSection::new();
        for _ in 0..instances {
            section.instantiate(0, Vec::<(&str, ModuleArg)>::new());
        }
        component.section(&section);
        component.finish()
    }

    /// A component that imports `interface` (an empty instance) at the top
    /// or, with `nested`, only inside a component it carries.
    fn component_importing(interface: &str, nested: bool) -> Vec<u8> {
        use wasm_encoder::{
            Component, ComponentImportSection, ComponentTypeRef, ComponentTypeSection, InstanceType,
            NestedComponentSection,
        };
        let mut importer = Component::new();
        let mut types = ComponentTypeSection::new();
        types.instance(&InstanceType::new());
        let mut imports = ComponentImportSection::new();
        imports.import(interface, ComponentTypeRef::Instance(0));
        importer.section(&types).section(&imports);
        if !nested {
            return importer.finish();
        }
        let mut outer = Component::new();
        outer.section(&NestedComponentSection(&importer));
        outer.finish()
    }

    /// An import the host does not grant refuses a component before it is
    /// compiled (one in Python takes seconds to compile), naming the import;
    /// a nested component's own imports are not the component's.
    #[test]
    fn an_ungranted_import_is_refused_before_anything_compiles() {
        let runtime = FilterRuntime::new(&crate::config::Limits::default()).unwrap();
        let compile = |bytes: Vec<u8>| FilterModule::compile(&runtime, "importer", &bytes, None);
        match compile(component_importing("wasi:http/outgoing-handler@0.2.0", false)) {
            Err(ModuleError::UngrantedImport { import, .. }) => assert_eq!(import, "wasi:http/outgoing-handler@0.2.0"),
            other => panic!("{:?}", other.map(|m| m.sha256.clone())),
        }
        assert_eq!(runtime.compilations(), 0, "it was compiled first");
        // Granted, or nested: compiled, then refused for lacking the world.
        for bytes in [component_importing("wasi:sockets/tcp@0.2.0", false), component_importing("x:y/z", true)] {
            assert!(matches!(compile(bytes), Err(ModuleError::WrongWorld { .. })));
        }
        assert_eq!(runtime.compilations(), 2);
    }

    /// A component that would take more of the instance pool's shared slots
    /// than its share is refused at load, naming the limit, instead of
    /// starving every other route's filters at run time.
    #[test]
    fn a_component_heavier_than_the_pool_allows_is_refused() {
        let runtime = FilterRuntime::new(&crate::config::Limits::default()).unwrap();
        let compile = |tables| FilterModule::compile(&runtime, "heavy", &component_with_tables(tables), None);
        // Four tables compile; the component is then refused for what it
        // lacks (the filter world), not for its weight.
        let light = compile(4).err().map(|e| e.to_string());
        assert!(matches!(compile(4), Err(ModuleError::WrongWorld { .. })), "{light:?}");
        match compile(5) {
            Err(ModuleError::Compile { reason, .. }) => assert!(reason.contains("table"), "{reason}"),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("five tables loaded"),
        }
    }
}
