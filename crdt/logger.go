package crdt

import (
	"fmt"
	"log/slog"
)

// slogAdapter lets go-ds-crdt, which logs through go-log's StandardLogger,
// write to the peer's structured log/slog logger instead.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Debug(args ...any)            { a.l.Debug(fmt.Sprint(args...)) }
func (a slogAdapter) Debugf(f string, args ...any) { a.l.Debug(fmt.Sprintf(f, args...)) }
func (a slogAdapter) Info(args ...any)             { a.l.Debug(fmt.Sprint(args...)) }
func (a slogAdapter) Infof(f string, args ...any)  { a.l.Debug(fmt.Sprintf(f, args...)) }
func (a slogAdapter) Warn(args ...any)             { a.l.Warn(fmt.Sprint(args...)) }
func (a slogAdapter) Warnf(f string, args ...any)  { a.l.Warn(fmt.Sprintf(f, args...)) }
func (a slogAdapter) Error(args ...any)            { a.l.Error(fmt.Sprint(args...)) }
func (a slogAdapter) Errorf(f string, args ...any) { a.l.Error(fmt.Sprintf(f, args...)) }
func (a slogAdapter) Fatal(args ...any)            { a.l.Error(fmt.Sprint(args...)); panic(fmt.Sprint(args...)) }
func (a slogAdapter) Fatalf(f string, args ...any) {
	a.l.Error(fmt.Sprintf(f, args...))
	panic(fmt.Sprintf(f, args...))
}
func (a slogAdapter) Panic(args ...any) { panic(fmt.Sprint(args...)) }
func (a slogAdapter) Panicf(f string, args ...any) {
	panic(fmt.Sprintf(f, args...))
}
