{{- define "regcache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "regcache.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "regcache.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "regcache.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The headless Service that gives each member a stable DNS name. */}}
{{- define "regcache.peersService" -}}
{{- printf "%s-peers" (include "regcache.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "regcache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "regcache.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "regcache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "regcache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "regcache.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "regcache.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Member N (from 1) is pod N-1, at its stable name on the cluster port. */}}
{{- define "regcache.peers" -}}
{{- $full := include "regcache.fullname" . -}}
{{- $svc := include "regcache.peersService" . -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.replicaCount) -}}
{{- $peers = append $peers (printf "%d=%s-%d.%s.%s.svc.%s:%d" (add1 $i) $full $i $svc $.Release.Namespace $.Values.clusterDomain (int $.Values.clusterPort)) -}}
{{- end -}}
{{- toJson $peers -}}
{{- end -}}

{{/* cache.diskBytes, or 85% of persistence.size (Mi, Gi or Ti). */}}
{{- define "regcache.diskBytes" -}}
{{- if .Values.cache.diskBytes -}}
{{- .Values.cache.diskBytes -}}
{{- else -}}
{{- $size := toString .Values.persistence.size -}}
{{- $units := dict "Mi" "MiB" "Gi" "GiB" "Ti" "TiB" -}}
{{- $found := "" -}}
{{- range $k, $v := $units -}}
{{- if hasSuffix $k $size -}}{{- $found = $k -}}{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "cache.diskBytes: set it, or give persistence.size in Mi, Gi or Ti (got %q)" $size) -}}
{{- end -}}
{{- $n := trimSuffix $found $size | float64 -}}
{{- printf "%d%s" (int (floor (mulf $n 0.85 1024))) (ternary "KiB" (ternary "GiB" "MiB" (eq $found "Ti")) (eq $found "Mi")) -}}
{{- end -}}
{{- end -}}

{{/* regcache serves no TLS yet: refuse rather than render a config it rejects. */}}
{{- define "regcache.checkTLS" -}}
{{- if or .Values.tls.secretName .Values.tls.certManager.issuerRef -}}
{{- fail "tls: regcache does not serve TLS on the client port yet; terminate TLS in front of the Service (an Ingress or a load balancer) and leave tls.secretName and tls.certManager.issuerRef empty" -}}
{{- end -}}
{{- end -}}

{{/* .Values.resources, or requests and limits that follow cache.memoryBytes. */}}
{{- define "regcache.resources" -}}
{{- if .Values.resources -}}
{{- toYaml .Values.resources -}}
{{- else -}}
{{- $size := toString .Values.cache.memoryBytes -}}
{{- $mib := 0 -}}
{{- if hasSuffix "GiB" $size -}}{{- $mib = mulf (trimSuffix "GiB" $size | float64) 1024 -}}
{{- else if hasSuffix "MiB" $size -}}{{- $mib = trimSuffix "MiB" $size | float64 -}}
{{- else if hasSuffix "KiB" $size -}}{{- $mib = divf (trimSuffix "KiB" $size | float64) 1024 -}}
{{- else -}}{{- fail (printf "cache.memoryBytes: give it in KiB, MiB or GiB to derive resources, or set resources (got %q)" $size) -}}
{{- end -}}
{{- $request := add (int (ceil $mib)) 192 -}}
requests:
  cpu: 250m
  memory: {{ $request }}Mi
limits:
  memory: {{ mul $request 2 }}Mi
{{- end -}}
{{- end -}}
