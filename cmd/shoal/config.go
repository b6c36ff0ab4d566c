package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// parseRun makes run's settings: the built-in defaults, then the --config
// file, then $SHOAL_*, then the flags in args, each over the one before.
func parseRun(args []string, stderr io.Writer) (*settings, error) {
	s := defaultSettings()
	file := configPath(args)
	if file != "" {
		if err := loadFile(file, s); err != nil {
			return nil, usageError("%v", err)
		}
	}
	if err := applyEnv(s); err != nil {
		return nil, usageError("%v", err)
	}
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.String("config", file, "TOML file of these settings, keyed as 'shoal config print' writes them; $SHOAL_* and flags override it (env SHOAL_CONFIG)")
	bindFlags(fs, s)
	if err := parseFlags(fs, args, stderr); err != nil {
		return nil, err
	}
	if err := s.validate(); err != nil {
		return nil, usageError("%v", err)
	}
	return s, nil
}

// loadFile decodes the TOML file at path onto s. A key is a row's TOML
// key or the flag's spelling of it ('-' for '_'); any other key is an
// error naming it and its line: a typo must not silently leave a default
// in place.
func loadFile(path string, s *settings) error {
	data, err := os.ReadFile(path)
	if err == nil {
		err = decodeFile(string(data), s)
	}
	if err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	return nil
}

// decodeFile decodes a config file's text onto s.
func decodeFile(data string, s *settings) error {
	md, err := toml.Decode(data, s)
	if err != nil {
		return err // a syntax or type error, with its line and key
	}
	left := md.Undecoded() // flag spellings and unknown keys, in file order
	if len(left) == 0 {
		return nil
	}
	var raw map[string]toml.Primitive
	if md, err = toml.Decode(data, &raw); err != nil {
		return err
	}
	return decodeLeft(&md, raw, left, s)
}

// decodeLeft decodes the keys among left that are spelt as flags onto s,
// and reports the first unknown key with its line.
func decodeLeft(md *toml.MetaData, raw map[string]toml.Primitive, left []toml.Key, s *settings) error {
	var noLine toml.Key
	for _, k := range left {
		if r, ok := settingByKey(strings.ReplaceAll(k[0], "-", "_")); ok {
			if len(k) > 1 { // inside a setting's value: a type error already
				continue
			}
			if err := decodeAlias(md, raw[k[0]], k[0], r, s); err != nil {
				return err
			}
			continue
		}
		if line := keyLine(md, raw[k[0]], k); line > 0 {
			return fmt.Errorf("unknown key %q at line %d (see 'shoal config print' for the keys)", strings.Join(k, "."), line)
		}
		if noLine == nil {
			noLine = k // a table a dotted key made: its keys come next
		}
	}
	if noLine != nil {
		return fmt.Errorf("unknown key %q (see 'shoal config print' for the keys)", strings.Join(noLine, "."))
	}
	return nil
}

// decodeAlias decodes key, r's TOML key spelt as its flag, onto s.
func decodeAlias(md *toml.MetaData, p toml.Primitive, key string, r setting, s *settings) error {
	if md.IsDefined(r.key) {
		return fmt.Errorf("keys %s (line %d) and %s name one setting: keep one", key, keyLine(md, p, toml.Key{key}), r.key)
	}
	return md.PrimitiveDecode(p, r.field(s))
}

// keyLine is the line of the key k, whose top-level value is p, or 0 when
// the file gives it none (a table made by a dotted key, a.b = 1).
// MetaData keeps key positions to itself; they come out only in the
// ParseError of a value that fails to decode, so decode k's value into
// one that always refuses.
func keyLine(md *toml.MetaData, p toml.Primitive, k toml.Key) int {
	for _, name := range k[1:] {
		var table map[string]toml.Primitive
		if md.PrimitiveDecode(p, &table) != nil {
			return 0
		}
		p = table[name]
	}
	var pe toml.ParseError
	if errors.As(md.PrimitiveDecode(p, &refuse{}), &pe) {
		return pe.Position.Line
	}
	return 0
}

type refuse struct{}

func (*refuse) UnmarshalTOML(any) error { return errors.New("refused") }

// applyEnv lays the $SHOAL_* variables over s. An empty variable counts
// as unset, as a bare SHOAL_PSK= line in an environment file means.
func applyEnv(s *settings) error {
	for _, r := range runSettings {
		v := os.Getenv(r.envName())
		if v == "" {
			continue
		}
		if err := setText(r.field(s), v); err != nil {
			return fmt.Errorf("%s=%q: %v (key %s, flag --%s)", r.envName(), v, err, r.key, r.flagName())
		}
	}
	return nil
}

// setText parses an environment variable into the field p points to.
// Lists are comma-separated.
func setText(p any, v string) error {
	switch p := p.(type) {
	case *string:
		*p = v
	case *int:
		n, err := strconv.Atoi(v)
		if err != nil {
			return errors.New("not an integer")
		}
		*p = n
	case *bool:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errors.New("not a boolean (use true or false)")
		}
		*p = b
	case *duration:
		return p.UnmarshalText([]byte(v))
	case *[]string:
		*p = nil
		for _, e := range strings.Split(v, ",") {
			if e = strings.TrimSpace(e); e != "" {
				*p = append(*p, e)
			}
		}
	default:
		panic(fmt.Sprintf("setText: a setting of type %T", p))
	}
	return nil
}

// bindFlags defines each row's flag on its typed field, so that parsing
// the flags writes over what the defaults, file and environment left
// (which -h then shows as the defaults).
func bindFlags(fs *flag.FlagSet, s *settings) {
	for _, r := range runSettings {
		name, help := r.flagName(), r.flagHelp()
		switch p := r.field(s).(type) {
		case *string:
			fs.StringVar(p, name, *p, help)
		case *int:
			fs.IntVar(p, name, *p, help)
		case *bool:
			fs.BoolVar(p, name, *p, help)
		case *duration:
			fs.DurationVar((*time.Duration)(p), name, time.Duration(*p), help)
		case *[]string:
			fs.Var(&listFlag{p: p}, name, help)
		default:
			panic(fmt.Sprintf("bindFlags: a setting of type %T", p))
		}
	}
}

// validate checks every setting, wherever it came from; the message names
// the TOML key, the flag and the variable, since any of them may hold it.
func (s *settings) validate() error {
	for _, r := range runSettings {
		if fix := r.check(s); fix != "" {
			return fmt.Errorf("%s = %s (%s): %s", r.key, r.shown(s), r.names(), fix)
		}
	}
	return nil
}

// shown is r's value in s as TOML, secrets masked.
func (r setting) shown(s *settings) string {
	if v := r.get(s); r.secret && v != "" {
		return strconv.Quote("********")
	}
	return tomlValue(r.get(s))
}

// tomlValue writes v as a TOML value, with TOML's own quoting.
func tomlValue(v any) string {
	if l, ok := v.([]string); ok && l == nil {
		v = []string{} // the encoder leaves a nil list out altogether
	}
	b, err := toml.Marshal(map[string]any{"v": v})
	if err != nil {
		panic(err) // the table holds only types TOML encodes
	}
	return strings.TrimSuffix(strings.TrimPrefix(string(b), "v = "), "\n")
}

// printSettings writes the effective settings as a TOML file that --config
// accepts, secrets masked.
func printSettings(w io.Writer, s *settings) error {
	var b strings.Builder
	b.WriteString("# effective settings of `shoal run` (flags > $SHOAL_* > --config file > defaults)\n")
	for _, r := range runSettings {
		fmt.Fprintf(&b, "%s = %s", r.key, r.shown(s))
		if r.secret && r.get(s) != "" {
			b.WriteString(" # masked")
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// needRestart names, by flag, the settings that differ between old and
// cur and that a SIGHUP reload cannot apply.
func needRestart(old, cur *settings) []string {
	var names []string
	for _, r := range runSettings {
		if !r.live && tomlValue(r.get(old)) != tomlValue(r.get(cur)) {
			names = append(names, r.flagName())
		}
	}
	return names
}

// cmdConfig handles `shoal config print [run flags]`.
func cmdConfig(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "print" {
		return usageError("usage: shoal config print [--config FILE] [any shoal run flag]")
	}
	return runPeer(args[1:], stdout, stderr, true)
}
