/*
 * sbx's Java kernel: JShell, run in the kernel's own JVM, behind the Jupyter plumbing of
 * jjava-jupyter (org.dflib.jjava, from Maven Central). scripts/setup.sh compiles this file into
 * /usr/lib/sbx/java/sbx-java-kernel.jar; src/jupyter/kernel.c launches it as
 * `java ... -jar sbx-java-kernel.jar CONNECTION_FILE`.
 *
 * Results and errors follow what E2B's Java kernel (IJava on JDK 11) reports: the value of a
 * trailing expression is the execute_result (text/plain is its toString()); code that does not
 * compile fails with CompilationException, an exception thrown by the code with EvalException;
 * what one print call writes is one stream message (see PrintPerCallStream).
 *
 * `java SbxJavaKernel --warmup` evaluates a few snippets and exits: setup runs it once to
 * record a class-data archive that makes the kernel start faster.
 */
package sbx.kernel;

import java.io.PrintStream;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.io.StringWriter;
import java.lang.reflect.Field;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;

import jdk.jshell.Diag;
import jdk.jshell.JShell;
import jdk.jshell.JShellException;
import jdk.jshell.Snippet;
import jdk.jshell.SnippetEvent;
import jdk.jshell.SourceCodeAnalysis;
import jdk.jshell.UnresolvedReferenceException;
import jdk.jshell.execution.LocalExecutionControl;
import jdk.jshell.spi.ExecutionControl;
import jdk.jshell.spi.ExecutionControlProvider;
import jdk.jshell.spi.ExecutionEnv;

import org.dflib.jjava.jupyter.channels.JupyterConnection;
import org.dflib.jjava.jupyter.channels.ShellReplyEnvironment;
import org.dflib.jjava.jupyter.kernel.BaseKernel;
import org.dflib.jjava.jupyter.kernel.BaseKernelBuilder;
import org.dflib.jjava.jupyter.kernel.JupyterIO;
import org.dflib.jjava.jupyter.kernel.KernelConnectionProperties;
import org.dflib.jjava.jupyter.kernel.LanguageInfo;
import org.dflib.jjava.jupyter.kernel.ReplacementOptions;
import org.dflib.jjava.jupyter.kernel.comm.CommManager;
import org.dflib.jjava.jupyter.kernel.display.DisplayData;
import org.dflib.jjava.jupyter.kernel.display.Renderer;
import org.dflib.jjava.jupyter.kernel.magic.MagicsRegistry;
import org.dflib.jjava.jupyter.kernel.util.StringStyler;
import org.dflib.jjava.jupyter.messages.Message;
import org.dflib.jjava.jupyter.messages.request.ExecuteRequest;

public final class SbxJavaKernel extends BaseKernel {
    /* What the jshell tool imports by default: code written for it expects these. */
    private static final String DEFAULT_IMPORTS = String.join("\n",
            "import java.io.*;", "import java.math.*;", "import java.net.*;",
            "import java.nio.file.*;", "import java.util.*;", "import java.util.concurrent.*;",
            "import java.util.function.*;", "import java.util.regex.*;",
            "import java.util.stream.*;");

    /*
     * The errors a run ends with. jjava-jupyter names the error after the exception's class,
     * takes its message as the value, and puts the exception's own stack in execute_reply's
     * traceback (the iopub error gets formatError's): these carry no stack, so that reply
     * shows none of the kernel's frames.
     */

    /** The name (and so the error name) IJava gives code that does not compile. */
    public static final class CompilationException extends RuntimeException {
        CompilationException(String message) {
            super(message, null, false, false);
        }
    }

    /** The name IJava gives an exception thrown by the user's code; the cause is that one. */
    public static final class EvalException extends RuntimeException {
        EvalException(Throwable cause) {
            super(cause.toString(), cause, false, false);
        }
    }

    /** Raised when an interrupt stopped the running code. */
    public static final class InterruptedException extends RuntimeException {
        InterruptedException() {
            super("execution interrupted", null, false, false);
        }
    }

    /*
     * Runs snippets in this JVM (no second JVM: the sandbox's memory and pids are small) on a
     * thread of their own, so that an interrupt can stop them, and keeps the values themselves
     * (JShell's API only sees their strings) for the execute_result.
     */
    static final class Exec extends LocalExecutionControl {
        final Map<String, Object> values = new ConcurrentHashMap<>();
        final AtomicLong nextKey = new AtomicLong();
        volatile Throwable lastThrown;
        volatile boolean stopped;
        private volatile Thread runner;

        @Override
        protected String invoke(Method doit) throws Exception {
            Object[] result = new Object[1];
            Throwable[] thrown = new Throwable[1];
            Thread t = new Thread(() -> {
                try {
                    result[0] = doit.invoke(null);
                } catch (Throwable e) {
                    thrown[0] = e;
                }
            }, "sbx-java-run");
            t.setContextClassLoader(Thread.currentThread().getContextClassLoader());
            setCancelled(false);
            runner = t;
            t.start();
            try {
                t.join();
            } finally {
                runner = null;
            }
            loadCancel();
            if (stopped)
                throw new ExecutionControl.StoppedException();
            if (thrown[0] instanceof InvocationTargetException) {
                lastThrown = thrown[0].getCause();
                throw (InvocationTargetException) thrown[0];
            }
            if (thrown[0] instanceof Exception)
                throw (Exception) thrown[0];
            if (thrown[0] != null)
                throw new InvocationTargetException(lastThrown = thrown[0]);
            String key = "sbx$value" + nextKey.incrementAndGet();
            if (result[0] != null)
                values.put(key, result[0]);
            return key;
        }

        private boolean cancelLoaded;

        static Object noop() {
            return null;
        }

        /*
         * LocalExecutionControl loads the class of the stop flag in its own invoke, which ours
         * replaces: one run of a no-op through it loads it (on Java 17 it loads nothing).
         */
        private void loadCancel() throws Exception {
            if (cancelLoaded)
                return;
            cancelLoaded = true;
            super.invoke(Exec.class.getDeclaredMethod("noop"));
        }

        /*
         * From Java 20 on, LocalExecutionControl.load instruments every class of a snippet with
         * checks of REPL.$Cancel$.allStop at loop back-edges and calls, which throw ThreadDeath
         * once it is set: the way to end a loop that never blocks now that Thread.stop is gone.
         * False if the class is not there (Java 17, which still has Thread.stop).
         */
        private boolean setCancelled(boolean on) {
            try {
                Field f = findClass("REPL.$Cancel$").getDeclaredField("allStop");
                f.setAccessible(true);
                f.setBoolean(null, on);
                return true;
            } catch (ReflectiveOperationException | RuntimeException e) {
                return false;
            }
        }

        @Override
        @SuppressWarnings({"deprecation", "removal"})
        public void stop() {
            Thread t = runner;
            if (t == null)
                return;
            stopped = true;
            t.interrupt();
            if (!setCancelled(true))
                t.stop();
        }
    }

    static final class ExecProvider implements ExecutionControlProvider {
        final Exec exec = new Exec();

        @Override
        public String name() {
            return "sbx";
        }

        @Override
        public ExecutionControl generate(ExecutionEnv env, Map<String, String> parameters) {
            return exec;
        }
    }

    /*
     * System.out and System.err of the user's code. IJava's streams send what reaches them at
     * every flush, and on JDK 11 a PrintStream with autoflush flushes after each write, so that
     * println("Hello, World!") arrives as "Hello, World!" then "\n", as E2B's tests expect. JDK 17
     * writes a println's text and line end at once, except in subclasses of PrintStream, whose
     * println is still print then newLine: this subclass, flushing at every write into
     * jjava's stream, restores what E2B's kernel sends.
     */
    static final class PrintPerCallStream extends PrintStream {
        PrintPerCallStream(PrintStream jupyterStream) {
            super(jupyterStream, true, StandardCharsets.UTF_8);
        }
    }

    static final class Builder extends BaseKernelBuilder<Builder, SbxJavaKernel> {
        @Override
        public SbxJavaKernel build() {
            return new SbxJavaKernel(buildJupyterIO(buildJupyterIOEncoding()), buildCommManager(),
                    buildRenderer(), buildMagicsRegistry(), buildErrorStyler());
        }
    }

    private final Exec exec;
    private final JShell shell;

    private SbxJavaKernel(JupyterIO io, CommManager comms, Renderer renderer,
            MagicsRegistry magics, StringStyler errorStyler) {
        super("sbx-java", "1.0",
                new LanguageInfo("java", Runtime.version().toString(), "text/x-java-source",
                        ".jshell", "java", "java", "script"),
                List.of(), null, io, comms, renderer, null, magics, false, errorStyler);
        ExecProvider provider = new ExecProvider();
        exec = provider.exec;
        shell = JShell.builder().executionEngine(provider, Map.of()).build();
        evalRaw(DEFAULT_IMPORTS);
    }

    private static String diagText(Diag d) {
        /* JShell's wrapper classes have no name: drop the line that would show it. */
        return d.getMessage(Locale.ROOT).replaceAll("\\n *location: class *$", "");
    }

    /* The source line(s) of a diagnostic, then its message, as the traceback shows them. */
    private static List<String> diagLines(String source, Diag d) {
        List<String> out = new ArrayList<>();
        long start = Math.max(0, Math.min(d.getStartPosition(), source.length()));
        long end = Math.max(start, Math.min(d.getEndPosition(), source.length()));
        int from = source.lastIndexOf('\n', (int) start - 1) + 1;
        int to = source.indexOf('\n', (int) end);
        if (to < 0)
            to = source.length();
        out.addAll(List.of(source.substring(from, to).split("\n", -1)));
        out.addAll(List.of(diagText(d).split("\n", -1)));
        return out;
    }

    private final Map<CompilationException, List<String>> tracebacks = new ConcurrentHashMap<>();

    private Object evalOne(String source, boolean last) {
        List<SnippetEvent> events = shell.eval(source);
        Object value = null;
        for (SnippetEvent ev : events) {
            if (ev.causeSnippet() != null)
                continue; /* a dependent snippet updated: not this one */
            Snippet sn = ev.snippet();
            if (ev.status() == Snippet.Status.REJECTED) {
                List<String> msgs = new ArrayList<>();
                List<String> tb = new ArrayList<>();
                shell.diagnostics(sn).forEach(d -> {
                    if (d.isError()) {
                        msgs.add(diagText(d));
                        tb.addAll(diagLines(source, d));
                    }
                });
                if (msgs.isEmpty())
                    msgs.add("rejected: " + source.strip());
                CompilationException ce = new CompilationException(String.join("\n", msgs));
                tracebacks.put(ce, tb);
                throw ce;
            }
            if (exec.stopped)
                throw new InterruptedException();
            JShellException ex = ev.exception();
            if (ex instanceof UnresolvedReferenceException) {
                UnresolvedReferenceException ure = (UnresolvedReferenceException) ex;
                List<String> missing = new ArrayList<>();
                shell.unresolvedDependencies(ure.getSnippet()).forEach(missing::add);
                throw new CompilationException("cannot run " + ure.getSnippet().source().strip()
                        + " until these are declared: " + String.join(", ", missing));
            }
            if (ex instanceof jdk.jshell.EvalException) {
                Throwable cause = exec.lastThrown;
                throw new EvalException(cause != null ? cause : ex);
            }
            if (ex != null)
                throw new EvalException(ex);
            boolean isExpr = sn.kind() == Snippet.Kind.EXPRESSION
                    || sn.subKind() == Snippet.SubKind.TEMP_VAR_EXPRESSION_SUBKIND;
            if (last && isExpr && ev.value() != null)
                value = exec.values.get(ev.value());
        }
        return value;
    }

    @Override
    public Object evalRaw(String code) {
        exec.values.clear();
        exec.lastThrown = null;
        exec.stopped = false;
        SourceCodeAnalysis sca = shell.sourceCodeAnalysis();
        String rest = code;
        Object value = null;
        while (!rest.isBlank()) {
            SourceCodeAnalysis.CompletionInfo info = sca.analyzeCompletion(rest);
            String source;
            if (info.completeness().isComplete()) {
                source = info.source();
                rest = info.remaining();
            } else {
                source = rest; /* incomplete: JShell's diagnostics say what is missing */
                rest = "";
            }
            value = evalOne(source, rest.isBlank());
        }
        exec.values.clear();
        return value;
    }

    @Override
    public List<String> formatError(Throwable e) {
        List<String> tb = new ArrayList<>();
        if (e instanceof CompilationException) {
            List<String> lines = tracebacks.remove(e);
            tb.addAll(lines != null && !lines.isEmpty() ? lines : List.of(e.getMessage()));
            return tb;
        }
        Throwable shown = e instanceof EvalException && e.getCause() != null
                ? e.getCause() : e;
        StringWriter sw = new StringWriter();
        shown.printStackTrace(new PrintWriter(sw));
        for (String line : sw.toString().split("\n")) {
            /* The frames below the user's code are the kernel's: leave them out. */
            if (line.contains("jdk.internal.reflect.") || line.contains("java.lang.reflect.")
                    || line.contains("sbx.kernel."))
                break;
            tb.add(line);
        }
        return tb;
    }

    @Override
    protected void replaceOutputStreams(ShellReplyEnvironment env) {
        super.replaceOutputStreams(env); /* and restores the JVM's own at the end of the run */
        System.setOut(new PrintPerCallStream(io.out));
        System.setErr(new PrintPerCallStream(io.err));
    }

    @Override
    protected synchronized void handleExecuteRequest(ShellReplyEnvironment env,
            Message<ExecuteRequest> request) {
        super.handleExecuteRequest(env, request);
        /* A silent request (sbx sets environment variables so) does not count, as in Jupyter:
         * the user's first run is execution 1. */
        if (request.getContent().isSilent())
            executionCount.decrementAndGet();
    }

    @Override
    public DisplayData inspect(String code, int at, boolean extraDetail) {
        return null;
    }

    @Override
    public ReplacementOptions complete(String code, int at) {
        int[] anchor = new int[1];
        List<String> words = new ArrayList<>();
        shell.sourceCodeAnalysis().completionSuggestions(code, at, anchor)
                .forEach(s -> words.add(s.continuation()));
        return new ReplacementOptions(words, anchor[0], at);
    }

    @Override
    public String isComplete(String code) {
        SourceCodeAnalysis.Completeness c =
                shell.sourceCodeAnalysis().analyzeCompletion(code).completeness();
        if (c == SourceCodeAnalysis.Completeness.DEFINITELY_INCOMPLETE
                || c == SourceCodeAnalysis.Completeness.CONSIDERED_INCOMPLETE)
            return IS_COMPLETE_MAYBE;
        if (c == SourceCodeAnalysis.Completeness.UNKNOWN)
            return IS_COMPLETE_BAD;
        return IS_COMPLETE_YES;
    }

    @Override
    public void interrupt() {
        shell.stop();
    }

    @Override
    public void onShutdown(boolean restarting) {
        super.onShutdown(restarting);
        shell.close();
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: SbxJavaKernel CONNECTION_FILE | --warmup");
            System.exit(2);
        }
        System.setProperty("slf4j.internal.verbosity", "ERROR"); /* no "no provider" notice */
        SbxJavaKernel kernel = new Builder().build();
        if (args[0].equals("--warmup")) {
            kernel.evalRaw("int sbx$x = 20; String sbx$s = List.of(1, 2).toString();");
            kernel.evalRaw("sbx$x + 1");
            try {
                kernel.evalRaw("sbx$undefined + 1");
            } catch (CompilationException expected) {
            }
            System.exit(0);
        }
        /* One snippet before the client's, so that even its first can be stopped (loadCancel). */
        kernel.evalRaw("int sbx$ready = 1;");
        /* sbx interrupts a run with SIGINT (as for every kernel): stop the code, don't exit. */
        sun.misc.Signal.handle(new sun.misc.Signal("INT"), sig -> kernel.interrupt());
        KernelConnectionProperties props =
                KernelConnectionProperties.parse(Files.readString(Path.of(args[0])));
        JupyterConnection conn = new JupyterConnection(props);
        kernel.becomeHandlerForConnection(conn);
        conn.connect();
        conn.waitUntilClose();
        System.exit(0);
    }
}
