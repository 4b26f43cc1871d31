import OpConvertCore
import OpConvertTensors
import Foundation

/// Ordered regex rename rules that map another trainer's tensor names onto OP v1 names.
/// File: a JSON array of {"pattern": "...", "replacement": "..."}; each rule is applied in
/// order to the result of the previous ones (NSRegularExpression syntax, $1 groups).
public struct KeyMap: Sendable {
    public struct Rule: Sendable {
        public var pattern: NSRegularExpression
        public var replacement: String
    }
    public var rules: [Rule]

    public init(path: String) throws {
        try InputCheck.requireFile(path, expected: InputCheck.keyMapExpected)
        let json: JSONValue
        do { json = try JSONParser.parse(try FileSystem.readAll(path)) } catch let e as JSONParseError {
            throw OPError.invalidKeyMap(path: path, reason: "not valid JSON: \(e.message)")
        }
        guard let items = json.arrayValue else {
            throw OPError.invalidKeyMap(path: path, reason: "expected a JSON array of {\"pattern\", \"replacement\"} rules")
        }
        rules = try items.enumerated().map { i, item in
            guard let p = item["pattern"]?.stringValue, let r = item["replacement"]?.stringValue else {
                throw OPError.invalidKeyMap(path: path, reason: "rule \(i) needs string fields \"pattern\" and \"replacement\"")
            }
            do {
                return Rule(pattern: try NSRegularExpression(pattern: p), replacement: r)
            } catch {
                throw OPError.invalidKeyMap(path: path, reason: "rule \(i): invalid regular expression \(p)")
            }
        }
    }

    public func apply(_ name: String) -> String {
        rules.reduce(name) { current, rule in
            rule.pattern.stringByReplacingMatches(in: current, range: NSRange(current.startIndex..., in: current), withTemplate: rule.replacement)
        }
    }
}
