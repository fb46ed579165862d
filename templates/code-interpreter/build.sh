# The code-interpreter template, on the base template: E2B's code-interpreter image
# (shared spec code-interpreter-template.md, section 1) as far as Debian's archive, PyPI, npm
# and Maven Central provide it, plus the support files of sbx's own kernel launcher
# (src/jupyter/kernel.c), under /usr/lib/sbx. Run by scripts/templates.sh as root in a chroot
# over the base layer, with this directory and src/jupyter/ in /tmp/def.
#
# Differences from E2B's image, and why: Python is Debian's 3.13 (E2B: python:3.13 from
# Docker Hub, not reachable here); Node.js 20 and R 4.5 come from Debian (E2B: NodeSource and
# CRAN); IRkernel is Debian's r-cran-irkernel; JavaScript and TypeScript run on sbx's own
# kernel (src/jupyter/javascript: E2B's semantics on Babel and zeromq from npm; E2B: its
# ijavascript fork from GitHub); Java is JDK 21 with sbx's own JShell kernel on
# jjava-jupyter's plumbing from Maven Central (E2B: JDK 11 and IJava from GitHub). Kernels
# are started by the sbx agent, not by a Jupyter server.
export DEBIAN_FRONTEND=noninteractive PIP_DEFAULT_TIMEOUT=100 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
DEF=/tmp/def
PREFIX=/usr/lib/sbx
umask 022 # kernels run as the sandbox's users: everything must be world-readable

step() { printf '== code-interpreter: %s\n' "$*"; }

step "Debian packages"
apt-get update -q
apt-get install -y -q --no-install-recommends \
    build-essential curl git util-linux jq sudo fonts-noto-cjk ca-certificates \
    r-base r-base-dev r-cran-irkernel openjdk-21-jdk-headless

step "Python packages (requirements.txt)"
# --ignore-installed: pip cannot upgrade what Debian installed for python3-setuptools
# (typing_extensions, packaging, ...); the newer copies go to /usr/local, first on sys.path.
pip install -q --no-warn-script-location --ignore-installed -r "$DEF/requirements.txt"

step "Python and Bash kernels' support under $PREFIX/python"
# bash_kernel and e2b-charts where kernel.c looks for them; sbx_e2b is sbx's IPython
# extension (e2b/chart and e2b/data formatters) and the Python kernel's launcher.
pip install -q --no-warn-script-location --target "$PREFIX/python" --no-deps \
    e2b-charts==1.0.0 bash_kernel==0.10.0
pip install -q --no-warn-script-location 'pexpect>=4.8' 'filetype>=1.2' 'pydantic>=2.9,<3'
install -m 0644 "$DEF/src/jupyter/python/sbx_e2b.py" "$PREFIX/python/sbx_e2b.py"

step "JavaScript and TypeScript kernel under $PREFIX/javascript"
# src/jupyter/javascript: kernel.js and transform.js, and its npm packages pinned by its
# package-lock.json (Babel for the transform, zeromq with its prebuilt binaries).
js=$PREFIX/javascript
mkdir -p "$js"
install -m 0644 "$DEF/src/jupyter/javascript/package.json" \
    "$DEF/src/jupyter/javascript/package-lock.json" "$js/"
(cd "$js" && npm ci --omit=dev --no-audit --no-fund --loglevel=error)
install -m 0644 "$DEF/src/jupyter/javascript/kernel.js" "$DEF/src/jupyter/javascript/transform.js" \
    "$js/"

step "Java kernel under $PREFIX/java"
# Our kernel (src/jupyter/java/SbxJavaKernel.java) runs on jjava-jupyter's Jupyter plumbing;
# these jars are it and its runtime dependencies, with their SHA-256.
MAVEN_CENTRAL=https://repo1.maven.org/maven2
JARS=(
    "org.dflib.jjava:jjava-jupyter:1.0-a6 9d158a68166abd4ea7bcd7d4b7c404c51fc8f3d013ba1c085997f454e4f64080"
    "com.google.code.gson:gson:2.11.0 57928d6e5a6edeb2abd3770a8f95ba44dce45f3b23b7a9dc2b309c581552a78b"
    "org.zeromq:jeromq:0.6.0 4784ff6d6e91b8eecd917b73d07b161c19a808ef870a5bdb760515bb67e208d3"
    "eu.neilalexander:jnacl:1.0.0 4accc9d2a56a6dd5198ec5e1c5c05a091da563bccd346fd6578edc083152beaa"
    "org.slf4j:slf4j-api:2.0.17 7b751d952061954d5abfed7181c1f645d336091b679891591d63329c622eb832"
)
dir=$PREFIX/java
mkdir -p "$dir/lib" /tmp/java-classes
cp=()
for entry in "${JARS[@]}"; do
    read -r coord sum <<<"$entry"
    IFS=: read -r g a v <<<"$coord"
    jar="$a-$v.jar"
    curl -fsSL --retry 3 -o "$dir/lib/$jar" "$MAVEN_CENTRAL/${g//.//}/$a/$v/$jar"
    echo "$sum  $dir/lib/$jar" | sha256sum -c --quiet -
    cp+=("lib/$jar")
done
(cd "$dir" && javac -nowarn -XDsuppressNotes --release 17 -cp "$(IFS=:; echo "${cp[*]}")" \
    -d /tmp/java-classes "$DEF/src/jupyter/java/SbxJavaKernel.java" 2>&1 |
    grep -v 'internal proprietary API\|sun\.misc\.Signal\|^ *^\|^[0-9]* warnings\?$' || true)
printf 'Main-Class: sbx.kernel.SbxJavaKernel\nClass-Path: %s\n' "${cp[*]}" >/tmp/MANIFEST.MF
jar --create --file "$dir/sbx-java-kernel.jar" --manifest /tmp/MANIFEST.MF -C /tmp/java-classes .
# A class-data archive of a warm-up run takes about a third off the kernel's start; it is
# valid only for this jar path, which is the one sandboxes see.
java -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:ArchiveClassesAtExit="$dir/kernel.jsa" \
    -Xlog:cds=off -Xlog:cds+dynamic=off -jar "$dir/sbx-java-kernel.jar" --warmup >/dev/null 2>&1 ||
    echo "warning: no class-data archive for the Java kernel (it will start slower)"
chmod -R a+rX "$PREFIX"

step "matplotlib configuration"
# E2B's matplotlibrc: CJK labels render (Noto Sans CJK).
for home in /root /home/user; do
    mkdir -p "$home/.config/matplotlib"
    printf 'font.family: sans-serif\nfont.sans-serif: Noto Sans CJK JP, DejaVu Sans\n' \
        >"$home/.config/matplotlib/matplotlibrc"
done
chown -R 1000:1000 /home/user/.config

step "clean up"
apt-get clean
rm -rf /var/lib/apt/lists/* /var/log/apt/* /var/log/*.log /root/.cache /root/.npm \
    /var/cache/debconf/*-old
