package txmanager_test

import (
	"go/ast"
	"go/parser"
	"go/scanner"
	"go/token"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeSnippets: every Go snippet in the README is code of a compiled
// example (txmanager's or recovery's), so that it compiles and its error
// handling is what the example does. Each paragraph of a snippet (split at
// blank lines) must appear token for token, comments and semicolons
// aside, in the body of one Example function, the paragraphs in order.
func TestReadmeSnippets(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	snippets := regexp.MustCompile("(?s)```go\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(snippets) == 0 {
		t.Fatal("no Go snippet in README.md")
	}
	var bodies [][]string
	for _, file := range []string{"example_test.go", "../recovery/example_test.go"} {
		bodies = append(bodies, exampleBodies(t, file)...)
	}
	for i, m := range snippets {
		var paras [][]string
		for _, p := range strings.Split(m[1], "\n\n") {
			if toks := goTokens(t, p); len(toks) > 0 {
				paras = append(paras, toks)
			}
		}
		found := false
		for _, b := range bodies {
			if containsInOrder(b, paras) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("README's Go snippet %d is not in any Example of txmanager or recovery (keep them the same):\n%s", i+1, m[1])
		}
	}
}

// exampleBodies returns the tokens of the body of every Example function
// in file.
func exampleBodies(t *testing.T, file string) [][]string {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, src, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]string
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || !strings.HasPrefix(fn.Name.Name, "Example") || fn.Body == nil {
			continue
		}
		from, to := fset.Position(fn.Body.Lbrace).Offset+1, fset.Position(fn.Body.Rbrace).Offset
		out = append(out, goTokens(t, string(src[from:to])))
	}
	if len(out) == 0 {
		t.Fatalf("no Example function in %s", file)
	}
	return out
}

// goTokens splits Go source into its tokens, without comments and
// semicolons (a snippet's one-line "if err != nil { log.Fatal(err) }" is
// the same code as gofmt's three lines).
func goTokens(t *testing.T, src string) []string {
	t.Helper()
	fset := token.NewFileSet()
	var s scanner.Scanner
	s.Init(fset.AddFile("", -1, len(src)), []byte(src), func(pos token.Position, msg string) {
		t.Errorf("%v: %s in:\n%s", pos, msg, src)
	}, 0)
	var toks []string
	for {
		_, tok, lit := s.Scan()
		switch {
		case tok == token.EOF:
			return toks
		case tok == token.SEMICOLON:
		case lit != "":
			toks = append(toks, lit)
		default:
			toks = append(toks, tok.String())
		}
	}
}

// containsInOrder reports whether each of paras occurs in body as a
// contiguous run of tokens, each after the one before.
func containsInOrder(body []string, paras [][]string) bool {
	at := 0
	for _, p := range paras {
		i := indexTokens(body[at:], p)
		if i < 0 {
			return false
		}
		at += i + len(p)
	}
	return true
}

func indexTokens(s, sub []string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		match := true
		for j := range sub {
			if s[i+j] != sub[j] {
				match = false
				break
			}
		}
		if match {
			return i
		}
	}
	return -1
}
