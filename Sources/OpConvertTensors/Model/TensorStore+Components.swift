import OpConvertCore

extension TensorStore {
    /// One model directory of a multi-component store (a diffusers pipeline's `unet/`,
    /// `text_encoder/`, ...): its own store, whose names appear prefixed `<name>/`.
    public struct Component: Sendable {
        /// The file that marks a directory of components (diffusers' pipeline index).
        public static let pipelineIndex = "model_index.json"

        public var name: String
        public var store: TensorStore

        /// The weights' file-name stem (`diffusion_pytorch_model`, `model`), kept when the
        /// component is rewritten so that its loader finds the new weights.
        public var weightsStem: String {
            let stems: [String]
            switch store.layout {
            case let .sharded(indexName): stems = [indexName]
            default: stems = store.files.map { FileSystem.split($0.path).name }
            }
            for suffix in [".safetensors.index.json", ".safetensors"] where stems.first?.hasSuffix(suffix) == true {
                return String(stems[0].dropLast(suffix.count))
            }
            return "model"
        }
    }

    /// The component of a prefixed name and the name inside it.
    public func component(of name: String) -> (component: Component, name: String)? {
        guard let slash = name.firstIndex(of: "/"), let c = components.first(where: { $0.name == name[..<slash] }) else { return nil }
        return (c, String(name[name.index(after: slash)...]))
    }

    /// A directory with model_index.json: every subdirectory holding safetensors weights is
    /// a component; the others (tokenizer, scheduler) and top-level files are carried.
    static func openComponents(_ path: String) throws -> TensorStore {
        var components: [Component] = []
        for name in try FileSystem.list(path).sorted() where !name.hasPrefix(".") {
            let sub = FileSystem.join(path, name)
            guard FileSystem.isDirectory(sub), !FileSystem.isSymbolicLink(sub) else { continue }
            let listing = try FileSystem.list(sub)
            guard listing.contains(where: { !$0.hasPrefix(".") && ($0.hasSuffix(".safetensors") || $0.hasSuffix(".safetensors.index.json")) }) else { continue }
            components.append(Component(name: name, store: try openComponent(sub, listing: listing)))
        }
        guard !components.isEmpty else {
            throw SafetensorsError.invalidIndex(file: path, reason: "a pipeline directory (\(Component.pipelineIndex)) with no component subdirectory holding .safetensors weights")
        }
        var files: [SafetensorsFile] = []
        var entries: [Entry] = []
        for c in components {
            let offset = files.count
            files += c.store.files
            for e in c.store.entries {
                var info = e.info
                info.name = c.name + "/" + info.name
                entries.append(Entry(info: info, file: offset + e.file))
            }
        }
        let aux = try FileSystem.list(path).filter { !$0.hasPrefix(".") && FileSystem.isRegularFile(FileSystem.join(path, $0)) }.sorted()
        return TensorStore(directory: path, path: path, layout: .components, files: files, entries: entries,
                           indexMetadata: nil, auxiliaryFiles: aux, components: components)
    }

    /// A component's weights: its index, its only .safetensors file, or (beside variants such
    /// as `.fp16.safetensors`) the one with the loader's default name.
    private static func openComponent(_ dir: String, listing: [String]) throws -> TensorStore {
        let visible = listing.filter { !$0.hasPrefix(".") }
        let defaults = ["diffusion_pytorch_model", "model"]
        if let index = defaults.map({ $0 + ".safetensors.index.json" }).first(where: visible.contains)
            ?? (visible.filter { $0.hasSuffix(".safetensors.index.json") }.count == 1 ? visible.first { $0.hasSuffix(".safetensors.index.json") } : nil) {
            return try openIndex(FileSystem.join(dir, index), userPath: dir)
        }
        let weights = visible.filter { $0.hasSuffix(".safetensors") }
        if let file = weights.count == 1 ? weights.first : defaults.map({ $0 + ".safetensors" }).first(where: weights.contains) {
            return try openSingle(FileSystem.join(dir, file), directory: dir, userPath: dir, listing: listing)
        }
        throw SafetensorsError.invalidIndex(file: dir, reason: "several .safetensors files (\(weights.joined(separator: ", "))), no index json and none with a default name (diffusion_pytorch_model.safetensors, model.safetensors)")
    }
}
