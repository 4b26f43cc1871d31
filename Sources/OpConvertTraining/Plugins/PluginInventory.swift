import OpConvertCore
import OpConvertTensors
import OpConvertAdapters
import Foundation

/// One plugin `opconvert plugin list` knows about (cpu, cuda), found or not.
public struct PluginListing: Codable, Sendable {
    /// "cpu" or "cuda".
    public var kind: String
    public var library: String
    /// Where it was found; nil when it is in none of the searched directories.
    public var path: String?
    public var name: String?
    public var description: String?
    public var abiVersion: Int?
    public var probe: PluginProbe?
    public var devices: [PluginDeviceInfo]
    /// Why it could not be listed (not found, does not load, device_info failed).
    public var error: String?
}

public struct PluginInventoryReport: Codable, Sendable {
    public var searched: [String]
    public var plugins: [PluginListing]
}

/// The plugins next to the executable, with their probes and devices.
public enum PluginInventory {
    public static let known = [("cpu", KernelPlugin.defaultLibraryName), ("cuda", KernelPlugin.cudaLibraryName)]

    public static func list() -> PluginInventoryReport {
        let dirs = KernelPlugin.defaultSearchDirectories()
        let plugins = known.map { kind, library -> PluginListing in
            var l = PluginListing(kind: kind, library: library, path: nil, name: nil, description: nil, abiVersion: nil,
                                  probe: nil, devices: [], error: nil)
            guard let path = KernelPlugin.find(library: library) else {
                l.error = "not found"
                return l
            }
            l.path = path
            do {
                let plugin = try KernelPlugin.load(path: path)
                l.name = plugin.name
                l.description = plugin.description
                l.abiVersion = Int(plugin.abiVersion)
                let probe = plugin.probe()
                l.probe = probe
                if probe.ok {
                    l.devices = try (0..<probe.deviceCount).map { try plugin.deviceInfo($0) }
                }
            } catch {
                l.error = "\(error)"
            }
            return l
        }
        return PluginInventoryReport(searched: dirs, plugins: plugins)
    }
}
