// README's "Embedding vnet" code is the example target's source, byte for byte: the example is built with the
// package (and linked into this test target), so the README's code compiles whenever the tests do.

import Foundation
import Testing

@Test("README's Embedding vnet code is Examples/EmbedQEMU/EmbedQEMU.swift")
func readmeEmbeddingCodeIsTheExample() throws {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let readme = try String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)
    let example = try String(contentsOf: root.appendingPathComponent("Examples/EmbedQEMU/EmbedQEMU.swift"), encoding: .utf8)
    let section = try #require(readme.components(separatedBy: "\n## Embedding vnet\n").dropFirst().first)
    let afterFence = try #require(section.components(separatedBy: "```swift\n").dropFirst().first)
    let code = try #require(afterFence.components(separatedBy: "```\n").first)
    #expect(code == example)
    #expect(example.split(separator: "\n").count <= 60)   // "about 50 lines"
}
