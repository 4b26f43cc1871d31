import Foundation
import XCTest
@testable import OpConvertKit

/// Names and numbers are the text's own: json-c never decides them (issue 8).
final class JSONExactnessTests: XCTestCase {
    private func open(_ bytes: [UInt8], in dir: String, name: String = "h.safetensors") throws -> SafetensorsFile {
        let path = dir + "/" + name
        writeFile(path, bytes)
        return try SafetensorsFile(path: path)
    }

    private func headerError(_ header: String, data: [UInt8] = [0, 0, 0, 0]) -> String? {
        let dir = TestPaths.scratch(self)
        do {
            _ = try open(rawSafetensors(header: header, data: data), in: dir)
            return nil
        } catch {
            XCTAssertEqual(ExitStatus.of(error), .dataError, "\(error)")
            XCTAssertTrue("\(error)".contains(dir + "/h.safetensors"), "error does not name the file: \(error)")
            return "\(error)"
        }
    }

    // MARK: NUL in keys

    func testNULInTensorNameIsRefused() {
        let e = headerError(#"{"a\u0000b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#)
        XCTAssertNotNil(e)
        XCTAssertTrue(e?.contains("U+0000") ?? false, e ?? "")
    }

    func testNULInMetadataKeyIsRefusedButAllowedInValues() throws {
        let e = headerError(#"{"__metadata__":{"k\u0000":"v"},"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#)
        XCTAssertTrue(e?.contains("U+0000") ?? false, e ?? "accepted")
        let dir = TestPaths.scratch(self)
        let f = try open(rawSafetensors(header: #"{"__metadata__":{"k":"v\u0000w"},"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                                        data: [0, 0, 0, 0]), in: dir)
        XCTAssertEqual(f.metadata, ["k": "v\u{0}w"])
    }

    /// Keys equal up to the NUL: json-c saw one key "x" and the reader paired the scanner's
    /// names with json-c's members by position, writing one tensor's data under the other's
    /// name and dropping the second, with exit 0.
    func testKeysEqualBeforeNULNeverPairSilently() throws {
        let header = #"{"x\u0000a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x\u0000b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#
        XCTAssertNotNil(headerError(header, data: [1, 0, 0, 0, 2, 0, 0, 0]))
        // End to end: convert refuses (65) and writes nothing.
        let dir = TestPaths.scratch(self)
        writeFile(dir + "/in.safetensors", rawSafetensors(header: header, data: [1, 0, 0, 0, 2, 0, 0, 0]))
        XCTAssertThrowsError(try Converter.run(ConvertOptions(input: dir + "/in.safetensors", output: dir + "/out.safetensors", dtype: .bf16, showProgress: false))) {
            XCTAssertEqual(ExitStatus.of($0), .dataError, "\($0)")
        }
        XCTAssertFalse(FileSystem.exists(dir + "/out.safetensors"))
        // The general parser refuses it too.
        XCTAssertThrowsError(try JSONParser.parse(#"{"x\u0000a":1,"x\u0000b":2}"#))
    }

    func testNamesComeFromTheTextByteForByte() throws {
        // Canonically equal in Swift, distinct bytes: two tensors, each findable by its bytes.
        let precomposed = "\u{e9}", decomposed = "e\u{301}"
        let header = "{\"\(precomposed)\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"\(decomposed)\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}"
        let f = try open(rawSafetensors(header: header, data: [7, 9]), in: TestPaths.scratch(self))
        XCTAssertEqual(f.tensors.count, 2)
        XCTAssertEqual(Array(f.data(try f.tensor(named: precomposed))), [7])
        XCTAssertEqual(Array(f.data(try f.tensor(named: decomposed))), [9])
        let v = try JSONParser.parse(#"{"\u00e9":1,"e\u0301":2,"\ud83d\ude00\/\"":3}"#)
        XCTAssertEqual(v.objectValue?.map { Array($0.0.utf8) }, [Array(precomposed.utf8), Array(decomposed.utf8), Array("😀/\"".utf8)])
    }

    // MARK: numbers

    func testHugeIntegersInHeadersAreRefusedNotClamped() {
        // json-c would read these as 18446744073709551615 (or Int64.max).
        let offsets = headerError(#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,1000000000000000000000000000000]}}"#)
        XCTAssertTrue(offsets?.contains("1000000000000000000000000000000") ?? false, offsets ?? "accepted")
        XCTAssertTrue(offsets?.contains("\"t\"") ?? false, offsets ?? "")
        let shape = headerError(#"{"t":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,4]}}"#)
        XCTAssertTrue(shape?.contains("too large") ?? false, shape ?? "accepted")
        let float = headerError(#"{"t":{"dtype":"F32","shape":[1e400],"data_offsets":[0,4]}}"#)
        XCTAssertTrue(float?.contains("1e400") ?? false, float ?? "accepted")
        XCTAssertNotNil(headerError(#"{"t":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}"#))
        XCTAssertNotNil(headerError(#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}}"#))
    }

    func testLargestExactOffsetsAreReadExactly() throws {
        // 2^53 + 1 is not a double: a reader going through doubles would be off by one.
        let e = headerError(#"{"t":{"dtype":"U8","shape":[9007199254740993],"data_offsets":[0,9007199254740993]}}"#, data: [])
        XCTAssertTrue(e?.contains("9007199254740993") ?? false, e ?? "accepted")
        XCTAssertEqual(try JSONParser.parse("[9007199254740993, 18446744073709551615, -9223372036854775808]"),
                       .array([.int(9007199254740993), .uint(UInt64.max), .int(Int64.min)]))
    }

    func testNumbersKeepTheirTextWhenNoCaseHoldsThem() throws {
        let v = try JSONParser.parse(#"[1e30, 1000000000000000000000000000000, 1e400, -1e400, 0.1000000000000000055511151231257827, 1E5, 0.1, 1e-05, 2.5]"#)
        XCTAssertEqual(v, .array([.number("1e30"), .number("1000000000000000000000000000000"), .number("1e400"), .number("-1e400"),
                                  .number("0.1000000000000000055511151231257827"), .number("1E5"),
                                  .double(0.1), .double(1e-05), .double(2.5)]))
        XCTAssertEqual(JSONWriter.serialize(v), "[1e30,1000000000000000000000000000000,1e400,-1e400,0.1000000000000000055511151231257827,1E5,0.1,1e-05,2.5]")
        // Readers get the value a double holds, or nothing when it would be infinite.
        XCTAssertEqual(JSONValue.number("1e30").doubleValue, 1e30)
        XCTAssertNil(JSONValue.number("1e400").doubleValue)
        XCTAssertNil(JSONValue.number("1000000000000000000000000000000").intValue)
        XCTAssertEqual(JSONValue.number("0.1000000000000000055511151231257827").doubleValue, 0.1)
    }

    func testAdapterConfigNumbersAreExactOrRefused() throws {
        func config(_ fields: String) -> JSONValue { try! JSONParser.parse(#"{"peft_type":"LORA","target_modules":["q"],"# + fields + "}") }
        XCTAssertEqual(try LoraConfig(json: config(#""r":8,"lora_alpha":0.1000000000000000055511151231257827"#), path: "a").loraAlpha, 0.1)
        XCTAssertEqual(try LoraConfig(json: config(#""r":8,"lora_alpha":1E1"#), path: "a").loraAlpha, 10)
        for bad in [#""r":8,"lora_alpha":1e400"#, #""r":18446744073709551616,"lora_alpha":8"#, #""r":9223372036854775808,"lora_alpha":8"#,
                    #""r":8,"lora_alpha":8,"rank_pattern":{"q":1e400}"#, #""r":8,"lora_alpha":8,"alpha_pattern":{"q":-1e400}"#] {
            XCTAssertThrowsError(try LoraConfig(json: config(bad), path: "adapter_config.json"), bad) { e in
                XCTAssertTrue("\(e)".contains("adapter_config.json"), "\(e)")
                XCTAssertEqual(ExitStatus.of(e), .dataError, "\(e)")
            }
        }
        let big = try? LoraConfig(json: config(#""r":18446744073709551616,"lora_alpha":8"#), path: "a")
        XCTAssertNil(big)
        XCTAssertThrowsError(try LoraConfig(json: config(#""r":18446744073709551616,"lora_alpha":8"#), path: "a")) {
            XCTAssertTrue("\($0)".contains("out of range"), "\($0)")
        }
    }

    func testOPConfigIntegersAreExact() throws {
        let dir = TestPaths.scratch(self)
        let peft = #"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q"]}"#
        for (mlp, ok) in [(#"{"hidden":8,"z_dim":8}"#, true), (#"{"hidden":18446744073709551624,"z_dim":8}"#, false),
                          (#"{"hidden":8.0,"z_dim":8}"#, false), (#"{"hidden":8,"z_dim":1e400}"#, false)] {
            let path = dir + "/op_config.json"
            writeFile(path, Array(#"{"format":"op-lora","format_version":1,"peft_config":\#(peft),"mlp":\#(mlp)}"#.utf8))
            if ok {
                XCTAssertEqual(try OPConfig(path: path).hidden, 8)
            } else {
                XCTAssertThrowsError(try OPConfig(path: path), mlp) { XCTAssertTrue("\($0)".contains(path), "\($0)") }
            }
        }
    }

    // MARK: config.json dtype rewrite

    func testDTypeRewriteChangesOnlyTheDTypeValue() throws {
        let dir = TestPaths.scratch(self)
        let path = dir + "/config.json"
        let before = """
        {
            "architectures": ["LlamaForCausalLM"],
          "rope_theta": 1e30,  "huge": 1000000000000000000000000000000,
          "inf": 1e400, "tiny": 0.1000000000000000055511151231257827,
          "name": "caf\\u00e9 \\ud83d\\ude00 \\/ é",
          "torch_dtype" :   "float32"  ,
          "nested": {"torch_dtype": "float32", "dtype": "float32"},
          "z": [1E5, -0.0, 1.50]
        }

        """
        writeFile(path, Array(before.utf8))
        let after = String(decoding: try ModelConfig.rewritingDType(at: path, to: "bfloat16"), as: UTF8.self)
        XCTAssertEqual(after, before.replacingOccurrences(of: #""torch_dtype" :   "float32""#, with: #""torch_dtype" :   "bfloat16""#))
        // Both spellings at top level; nested ones are left alone, as before.
        writeFile(path, Array(#"{"dtype":"float32","a":1e400,"torch_dtype":null}"#.utf8))
        XCTAssertEqual(String(decoding: try ModelConfig.rewritingDType(at: path, to: "float16"), as: UTF8.self),
                       #"{"dtype":"float16","a":1e400,"torch_dtype":"float16"}"#)
        // Already right, or absent: the same bytes.
        let same = Array(#"{"torch_dtype":"bfl\u006fat16","x":1e400}"#.utf8)
        writeFile(path, same)
        XCTAssertEqual(try ModelConfig.rewritingDType(at: path, to: "bfloat16"), same)
    }

    func testDTypeRewriteRefusesMalformedConfigNamingIt() {
        let dir = TestPaths.scratch(self)
        let path = dir + "/config.json"
        for bad in [#"{"a\u0000":1,"torch_dtype":"float32"}"#, #"{"torch_dtype":"float32","torch_dtype":"float16"}"#, #"{"torch_dtype":"float32""#, "[1]"] {
            writeFile(path, Array(bad.utf8))
            XCTAssertThrowsError(try ModelConfig.rewritingDType(at: path, to: "bfloat16"), bad) { e in
                XCTAssertTrue("\(e)".hasPrefix(path + ":"), "\(e)")
                XCTAssertEqual(ExitStatus.of(e), .dataError, "\(e)")
            }
        }
    }

    func testConvertWritesConfigWithOnlyTheDTypeChanged() throws {
        let dir = TestPaths.scratch(self)
        try FileManager.default.createDirectory(atPath: dir + "/model", withIntermediateDirectories: true)
        let config = "{\n  \"a\": 1e400,\n  \"b\": 0.1000000000000000055511151231257827,\n  \"torch_dtype\": \"float32\"\n}\n"
        writeFile(dir + "/model/config.json", Array(config.utf8))
        writeFile(dir + "/model/model.safetensors", rawSafetensors(header: #"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: [Float(1), 2].bytes))
        _ = try Converter.run(ConvertOptions(input: dir + "/model", output: dir + "/out", dtype: .bf16, showProgress: false))
        XCTAssertEqual(String(decoding: readBytes(dir + "/out/config.json"), as: UTF8.self),
                       config.replacingOccurrences(of: "float32", with: "bfloat16"))
    }

    // MARK: other header shapes still read

    func testEntryFormsAndUnknownFields() throws {
        let header = #"{"a":["F32",[1],[0,4]],"b":{"dtype":{"U8":null},"shape":[2],"data_offsets":[4,6],"extra":{"x":[1e400,"s"]}}}"#
        let f = try open(rawSafetensors(header: header, data: [0, 0, 0, 0, 1, 2]), in: TestPaths.scratch(self))
        XCTAssertEqual(f.tensors.map(\.name), ["a", "b"])
        XCTAssertEqual(f.tensors.map(\.dtype), [.f32, .u8])
        XCTAssertEqual(f.tensors.map(\.shape), [[1], [2]])
        XCTAssertNotNil(headerError(#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1,"extra":2}}"#))
        XCTAssertNotNil(headerError(#"{"t":{"dtype":{"F32":null,"F16":null},"shape":[1],"data_offsets":[0,4]}}"#))
        // A repeated name is reported as such even when an entry before it is bad.
        let e = headerError(#"{"t":5,"u":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"\u0074":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#)
        XCTAssertTrue(e?.contains("duplicate key \"t\"") ?? false, e ?? "accepted")
    }
}

/// Names and text from files shown on a terminal.
final class TextEscapingTests: XCTestCase {
    func testControlAndBidiCharactersAreEscaped() {
        XCTAssertEqual(escapedForDisplay("model.layers.0.q_proj.weight"), "model.layers.0.q_proj.weight")
        XCTAssertEqual(escapedForDisplay("a\nb\tc\rd"), "a\\nb\\tc\\rd")
        XCTAssertEqual(escapedForDisplay("\u{0}\u{1b}[2J\u{7f}"), "\\u{0}\\u{1b}[2J\\u{7f}")
        XCTAssertEqual(escapedForDisplay("c1\u{85}\u{9f}"), "c1\\u{85}\\u{9f}")
        XCTAssertEqual(escapedForDisplay("x\u{2028}y\u{2029}"), "x\\u{2028}y\\u{2029}")
        XCTAssertEqual(escapedForDisplay("evil\u{202e}txt.exe\u{2066}\u{2069}\u{200f}\u{61c}"), "evil\\u{202e}txt.exe\\u{2066}\\u{2069}\\u{200f}\\u{61c}")
        // Printable non-ASCII is kept, including characters that share lead bytes with escaped ones.
        XCTAssertEqual("café 中 😀 \u{a0} \u{2026} \u{2030} ؛".displayEscaped, "café 中 😀 \u{a0} \u{2026} \u{2030} ؛")
    }

    func testInspectRenderEscapesNamesAndShortensHugeShapes() throws {
        let header = #"{"__metadata__":{"k\u001b":"v\n"},"evil\u202e\n":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}"#
        let dir = TestPaths.scratch(self)
        writeFile(dir + "/m.safetensors", rawSafetensors(header: header, data: [5]))
        let text = Inspector.render(try Inspector.inspect(dir + "/m.safetensors"))
        XCTAssertTrue(text.contains("evil\\u{202e}\\n"), text)
        XCTAssertTrue(text.contains("k\\u{1b}: v\\n"), text)
        XCTAssertTrue(text.contains("[1, 1, 1, 1, 1, 1, 1, 1, ..., 1, 1] (20 dims)"), text)
        XCTAssertFalse(text.unicodeScalars.contains { $0 == "\u{1b}" || $0 == "\u{202e}" }, text)
        XCTAssertEqual(text.split(separator: "\n").count, text.components(separatedBy: "\n").count - 1)
    }
}
