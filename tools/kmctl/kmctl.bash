# bash completion for kmctl.
#
# It holds no list of commands or options: it asks the kmctl being completed
# (`kmctl --complete` for the commands, `kmctl --complete COMMAND` for a
# command's options and operands), so it always matches that kmctl's table.
# Completes commands, long options, NAME from the shared-memory objects of
# this host, PROVIDER from `kmctl presets`, and FILE operands and FILE
# options with file names.
# Installed by `make install` as $(bashcompdir)/kmctl.

_kmctl()
{
    local cur prev kmctl i cmd="" spec n word skip
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD - 1]}
    kmctl=${COMP_WORDS[0]}
    COMPREPLY=()

    # The command is the first word that is not an option.
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
        -*) ;;
        *) cmd=${COMP_WORDS[i]}; break ;;
        esac
    done
    if [ -z "$cmd" ]; then
        if [[ $cur == -* ]]; then
            mapfile -t COMPREPLY < <(compgen -W "--help --version --complete" -- "$cur")
        else
            mapfile -t COMPREPLY < <(compgen -W "$("$kmctl" --complete 2>/dev/null)" -- "$cur")
        fi
        return 0
    fi
    spec=$("$kmctl" --complete "$cmd" 2>/dev/null) || return 0

    # The argument of an option: a file name if kmctl says FILE, else nothing.
    if [[ $prev == --* ]]; then
        case $'\n'$spec$'\n' in
        *$'\n'"$prev=FILE"$'\n'*)
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
            return 0 ;;
        *$'\n'"$prev=ARG"$'\n'*)
            return 0 ;;
        esac
    fi
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(sed -n 's/=.*//; /^--/p' <<<"$spec")" -- "$cur")
        return 0
    fi

    # Which operand is this?  Count the words after the command that are
    # neither options nor their arguments.
    local -a operands
    read -r -a operands <<<"$(sed -n 's/^operands: //p' <<<"$spec")"
    n=0
    skip=0
    for ((i = i + 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if [ "$skip" = 1 ]; then
            skip=0
        elif [[ $word == --*=* ]]; then
            :
        elif [[ $word == --* ]]; then
            grep -qx -- "$word=[A-Z]*" <<<"$spec" && skip=1
        elif [[ $word != -* ]]; then
            n=$((n + 1))
        fi
    done
    case ${operands[n]:-} in
    NAME)
        local shm
        shm=$(cd /dev/shm 2>/dev/null && ls -1 2>/dev/null)
        mapfile -t COMPREPLY < <(compgen -W "$shm" -- "$cur") ;;
    FILE)
        mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
    "[PROVIDER]")
        # The providers of the presets in effect: the first column of the
        # first table of `kmctl presets` (after its origin line and titles).
        mapfile -t COMPREPLY < <(compgen -W "$("$kmctl" presets 2>/dev/null |
            awk 'NR > 3 && !NF {exit} NR > 3 && !seen[$1]++ {print $1}')" -- "$cur") ;;
    esac
    return 0
}
complete -o filenames -F _kmctl kmctl
