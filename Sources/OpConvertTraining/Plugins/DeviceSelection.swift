import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

/// What `--device` asks for.
public enum DeviceChoice: Equatable, Sendable, CustomStringConvertible {
    /// CUDA when its plugin is there and its probe succeeds, else the CPU.
    case auto
    case cpu
    /// A CUDA device (index nil: 0, written "cuda").
    case cuda(Int?)

    /// Parses "auto", "cpu", "cuda" or "cuda:N"; anything else is a usage error naming it.
    public init(parsing text: String) throws {
        switch text {
        case "auto": self = .auto
        case "cpu": self = .cpu
        case "cuda": self = .cuda(nil)
        default:
            guard text.hasPrefix("cuda:"), let n = Int(text.dropFirst(5)), n >= 0, !text.dropFirst(5).hasPrefix("+") else {
                throw PluginError.invalidDevice(text)
            }
            self = .cuda(n)
        }
    }

    public var description: String {
        switch self {
        case .auto: return "auto"
        case .cpu: return "cpu"
        case let .cuda(n): return n.map { "cuda:\($0)" } ?? "cuda"
        }
    }

    /// The device index inside the chosen plugin.
    public var index: Int {
        if case let .cuda(n?) = self { return n }
        return 0
    }
}

/// A plugin and device index chosen for a run, with the label runs report.
public struct SelectedDevice: Sendable {  // KernelPlugin is immutable after loading
    public let plugin: KernelPlugin
    public let device: Int
    /// "cpu", "cuda:0 (NVIDIA H200)", or for --plugin PATH "<plugin name>:N (<device name>)".
    public let label: String
    /// With --device auto and no --plugin: the stderr line saying what was chosen and, on
    /// the CPU, why not CUDA (plain mode prints it; JSON has `device`).
    public let announcement: String?

    package init(plugin: KernelPlugin, device: Int, label: String, announcement: String?) {
        self.plugin = plugin; self.device = device; self.label = label; self.announcement = announcement
    }

    /// A context on the chosen device.
    public func makeContext(threads: Int = 0, allowTF32: Bool = false, cacheDirectory: String? = nil) throws -> KernelContext {
        try plugin.makeContext(device: device, threads: threads, allowTF32: allowTF32, cacheDirectory: cacheDirectory)
    }
}

/// Turns `--device` / `--plugin` into a plugin and device index.
public enum DeviceSelection {
    /// Loads the plugin `choice` (or `pluginPath`) names, without probing it: what
    /// `plugin check --compile-only` needs (no device). `auto` takes the CUDA plugin
    /// whenever it is built and loads (compiling needs no GPU), else the CPU plugin.
    public static func plugin(for choice: DeviceChoice, pluginPath: String?) throws -> KernelPlugin {
        if let pluginPath { return try KernelPlugin.load(path: pluginPath) }
        switch choice {
        case .cpu: return try KernelPlugin.load(path: nil)
        case .cuda: return try loadCUDA(choice)
        case .auto:
            if let cuda = KernelPlugin.find(library: KernelPlugin.cudaLibraryName), let p = try? KernelPlugin.load(path: cuda) {
                return p
            }
            return try KernelPlugin.load(path: nil)
        }
    }

    /// Chooses the plugin and device: `pluginPath` (device index from cuda:N, else 0), or
    /// the CPU plugin, or the CUDA plugin next to the executable (its probe must succeed
    /// and the index be below its device count, else `deviceUnavailable`, exit 69).
    public static func select(_ choice: DeviceChoice, pluginPath: String?) throws -> SelectedDevice {
        if let pluginPath {
            let plugin = try KernelPlugin.load(path: pluginPath)
            let index = choice.index
            let probe = plugin.probe()
            guard probe.ok else {
                throw PluginError.deviceUnavailable(device: choice.description, reason: "plugin \(plugin.path) cannot run here: \(probe.reason)")
            }
            guard index < probe.deviceCount else {
                throw PluginError.deviceUnavailable(device: choice.description,
                                                    reason: "plugin \(plugin.path) has \(probe.deviceCount) device(s), no device \(index)")
            }
            return SelectedDevice(plugin: plugin, device: index, label: label(plugin, index, kind: plugin.name), announcement: nil)
        }
        switch choice {
        case .cpu:
            return SelectedDevice(plugin: try KernelPlugin.load(path: nil), device: 0, label: "cpu", announcement: nil)
        case .cuda:
            return try selectCUDA(choice)
        case .auto:
            do {
                let chosen = try selectCUDA(.cuda(nil))
                return SelectedDevice(plugin: chosen.plugin, device: chosen.device, label: chosen.label,
                                      announcement: "opconvert: using \(chosen.label)")
            } catch let e as PluginError {
                let why: String
                if case let .deviceUnavailable(_, reason) = e { why = reason } else { why = e.description }
                return SelectedDevice(plugin: try KernelPlugin.load(path: nil), device: 0, label: "cpu",
                                      announcement: "opconvert: using cpu (cuda: \(shortReason(why)))")
            }
        }
    }

    /// The CUDA plugin file from the default search directories, or deviceUnavailable naming them.
    static func loadCUDA(_ choice: DeviceChoice) throws -> KernelPlugin {
        guard let path = KernelPlugin.find(library: KernelPlugin.cudaLibraryName) else {
            let dirs = KernelPlugin.defaultSearchDirectories()
            throw PluginError.deviceUnavailable(device: choice.description,
                reason: "the CUDA plugin \(KernelPlugin.cudaLibraryName) was not found; looked in \(dirs.isEmpty ? "(no candidate directory)" : dirs.joined(separator: ", ")) (\(KernelPlugin.searchOrderDescription))")
        }
        return try KernelPlugin.load(path: path)
    }

    static func selectCUDA(_ choice: DeviceChoice) throws -> SelectedDevice {
        let plugin = try loadCUDA(choice)
        let probe = plugin.probe()
        guard probe.ok else {
            throw PluginError.deviceUnavailable(device: choice.description, reason: "no usable CUDA device: \(probe.reason)")
        }
        let index = choice.index
        guard index < probe.deviceCount else {
            throw PluginError.deviceUnavailable(device: choice.description,
                                                reason: "no usable CUDA device: there are \(probe.deviceCount), numbered from 0")
        }
        return SelectedDevice(plugin: plugin, device: index, label: label(plugin, index, kind: "cuda"), announcement: nil)
    }

    static func label(_ plugin: KernelPlugin, _ index: Int, kind: String) -> String {
        let name = (try? plugin.deviceInfo(index).name) ?? ""
        return "\(kind):\(index)" + (name.isEmpty ? "" : " (\(name))")
    }

    /// The first clause of a probe's reason (before "; tried ..."), at most 100 characters.
    package static func shortReason(_ reason: String) -> String {
        var s = reason.split(separator: ";", maxSplits: 1).first.map(String.init) ?? reason
        s = s.trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "\n", with: " ")
        if s.isEmpty { s = "unavailable" }
        return s.count > 100 ? String(s.prefix(97)) + "..." : s
    }
}
