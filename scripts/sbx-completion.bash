# bash completion of sbx: verbs, their options, and sandbox ids (from `sbx ls --format json`,
# when E2B_API_URL and E2B_API_KEY reach a daemon).
_sbx_ids() {
    sbx ls --format json 2>/dev/null | sed -n 's/.*"sandboxID": *"\([^"]*\)".*/\1/p'
}

_sbx() {
    local cur=${COMP_WORDS[COMP_CWORD]} verb=${COMP_WORDS[1]}
    local verbs="serve ls create run exec shell kill logs stats inspect cp pause resume snapshot volume template keys version"
    if ((COMP_CWORD == 1)); then
        mapfile -t COMPREPLY < <(compgen -W "$verbs --help --version" -- "$cur")
        return
    fi
    local opts
    case $verb in
    serve) opts=$(sbx serve --help 2>/dev/null | grep -o -- '--[a-z-]*' | sort -u) ;;
    ls) opts="--format --state --json" ;;
    create) opts="--template --timeout --metadata --env --no-internet" ;;
    run) opts="--rm -i --timeout --metadata --env --no-internet --user --cwd" ;;
    exec) opts="-i --interactive --user --cwd --env" ;;
    shell) opts="--user --cwd" ;;
    kill) opts="--all -m --metadata" ;;
    logs) opts="-f --follow --level --format" ;;
    stats) opts="--no-stream --format" ;;
    inspect) opts="--format" ;;
    cp) opts="--user" ;;
    pause) opts="--filesystem" ;;
    resume) opts="--timeout --reboot" ;;
    volume)
        if ((COMP_CWORD == 2)); then
            mapfile -t COMPREPLY < <(compgen -W "ls create rm" -- "$cur")
            return
        fi
        opts="--format"
        ;;
    template)
        if ((COMP_CWORD == 2)); then
            mapfile -t COMPREPLY < <(compgen -W "ls rm build import" -- "$cur")
            return
        fi
        opts="--name --cpu --memory-mb --format"
        ;;
    keys)
        if ((COMP_CWORD == 2)); then
            mapfile -t COMPREPLY < <(compgen -W "create ls revoke" -- "$cur")
            return
        fi
        opts="--admin --format"
        ;;
    esac
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$opts --api-url --api-key --help" -- "$cur")
        return
    fi
    case $verb in
    exec | shell | kill | logs | stats | inspect | pause | resume | snapshot)
        mapfile -t COMPREPLY < <(compgen -W "$(_sbx_ids)" -- "$cur")
        ;;
    cp)
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        ;;
    esac
}
complete -F _sbx sbx
