package harness

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// templateVersion changes whenever initData's arguments change, so that
// templates made by an older harness are not used.
const templateVersion = "2"

// prepareData fills s.dataDir. initdb and mariadb-install-db take about a
// second each (several under load) while copying their result takes a
// tenth of that, so the first Start on a machine keeps a copy in the temp
// directory (threepc-cache-*) and later Starts, in any test binary, copy
// it. A template that fails its manifest check is replaced.
func (s *Server) prepareData(ctx context.Context) (fromTemplate bool, err error) {
	tmpl := s.templateDir()
	if tmpl != "" {
		if err := copyTemplate(tmpl, s.dataDir, s.cred); err == nil {
			return true, nil
		} else if !os.IsNotExist(err) {
			// Damaged, e.g. by a temp directory cleaner: make a new one.
			s.logf("harness: discarding template %s: %v", tmpl, err)
			os.RemoveAll(tmpl)
		}
		os.RemoveAll(s.dataDir)
	}
	if err := s.initData(ctx); err != nil {
		return false, err
	}
	if tmpl != "" {
		saveTemplate(s.dataDir, tmpl)
	}
	return false, nil
}

// templateDir names the template for this kind, binaries and server user;
// "" when the binaries cannot be identified.
func (s *Server) templateDir() string {
	h := sha256.New()
	fmt.Fprintf(h, "%s|%s|%d|", templateVersion, s.kind, os.Geteuid())
	if s.cred != nil {
		fmt.Fprintf(h, "%d:%d|", s.cred.Uid, s.cred.Gid)
	}
	for _, p := range []string{s.bin.initdb, s.bin.server} {
		fi, err := os.Stat(p)
		if err != nil {
			return ""
		}
		fmt.Fprintf(h, "%s|%d|%d|", p, fi.Size(), fi.ModTime().UnixNano())
	}
	return filepath.Join(s.opts.Dir, "threepc-cache-"+string(s.kind)+"-"+hex.EncodeToString(h.Sum(nil)[:8]))
}

const manifestName = "manifest"

// saveTemplate copies a freshly initialised data directory to tmpl. The
// copy is built under a temporary name and renamed into place, so readers
// never see a partial template and concurrent savers do not clash.
func saveTemplate(dataDir, tmpl string) {
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	tmp := tmpl + ".tmp-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(rnd[:])
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return
	}
	files, size, err := copyTree(dataDir, filepath.Join(tmp, "data"), nil)
	if err == nil {
		err = os.WriteFile(filepath.Join(tmp, manifestName), []byte(fmt.Sprintf("%d %d\n", files, size)), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, tmpl)
	}
	if err != nil {
		os.RemoveAll(tmp)
	}
}

// copyTemplate copies tmpl's data directory to dst, owned by cred, and
// checks it against the manifest.
func copyTemplate(tmpl, dst string, cred *syscall.Credential) error {
	b, err := os.ReadFile(filepath.Join(tmpl, manifestName))
	if err != nil {
		return err
	}
	var wantFiles, wantSize int64
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d %d", &wantFiles, &wantSize); err != nil {
		return fmt.Errorf("bad manifest: %w", err)
	}
	files, size, err := copyTree(filepath.Join(tmpl, "data"), dst, cred)
	if err != nil {
		if os.IsNotExist(err) {
			err = fmt.Errorf("incomplete: %v", err) // not "no template"
		}
		return err
	}
	if files != wantFiles || size != wantSize {
		return fmt.Errorf("has %d files, %d bytes; manifest says %d, %d", files, size, wantFiles, wantSize)
	}
	return nil
}

// copyTree copies the directories and regular files under src to dst,
// keeping permissions and giving them to cred (nil: the current user).
func copyTree(src, dst string, cred *syscall.Credential) (files, size int64, err error) {
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil {
				return err
			}
		case info.Mode().IsRegular():
			n, err := copyFile(p, target, info.Mode().Perm())
			if err != nil {
				return err
			}
			files++
			size += n
		default:
			return fmt.Errorf("harness: unexpected file %s in data directory", p)
		}
		if cred != nil {
			return os.Lchown(target, int(cred.Uid), int(cred.Gid))
		}
		return nil
	})
	return files, size, err
}

func copyFile(src, dst string, perm fs.FileMode) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}
